"""Supervised classification as LightningModules.

``Classifier(net, ...)`` trains ``net`` (logits out) with cross-entropy. With ``allowed_labels``
the softmax runs over those labels only, so a client that never sees some classes does not push
their logits down (a label-skew remedy for federated clients; see docs/results/merge.md).

``BackboneClassifier(backbone, num_classes, mode)`` is stage two of paper 003: a client's own
linear task head on the shared (stage-one) backbone. ``mode`` says how much of the backbone
trains: ``linear`` (frozen: a linear probe), ``partial`` (its last stage, the paper's "minimal
retraining") or ``full``. Frozen parts stay in eval mode, so their BatchNorm statistics are the
pretrained ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from fedssl.runtime import Runtime, predict

__all__ = [
    "Classifier",
    "BackboneClassifier",
    "MODES",
    "trainable_prefixes",
    "accuracy",
    "batches_accuracy",
]

#: How much of the backbone a :class:`BackboneClassifier` trains.
MODES = ("linear", "partial", "full")


class Classifier(pl.LightningModule):
    """Cross-entropy training of a network that outputs logits.

    Args:
        net: the network; its ``state_dict`` is what federates.
        optimizer: ``sgd`` or ``adam``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        allowed_labels: restrict the softmax to these labels (None: all).
        gamma: multiply the learning rate by this after every epoch (1.0: constant).
        augment: ``none``, ``flip`` (random horizontal flip) or ``flip_shift`` (flip plus a
            random translation of up to ``shift`` pixels), applied per example on the batch.
        shift: maximum translation in pixels for ``flip_shift``.
        prox_mu: FedProx (Li et al. 2020): add ``prox_mu / 2 * ||w - w_start||^2`` to the loss,
            ``w_start`` being the weights the fit started from (the received global model);
            0 disables it.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        allowed_labels: Sequence[int] | None = None,
        gamma: float = 1.0,
        augment: str = "none",
        shift: int = 2,
        prox_mu: float = 0.0,
    ):
        super().__init__()
        if prox_mu < 0:
            raise ValueError(f"prox_mu must be >= 0, got {prox_mu}")
        self.net = net
        self.prox_mu = prox_mu
        self._anchor: list[torch.Tensor] = []
        self.optimizer_name = optimizer
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.allowed_labels = (
            None if allowed_labels is None else sorted(int(a) for a in allowed_labels)
        )
        self._mask: torch.Tensor | None = None
        self.gamma = gamma
        if augment not in ("none", "flip", "flip_shift"):
            raise ValueError(f"unknown augment {augment!r}; choose none, flip or flip_shift")
        self.augment, self.shift = augment, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped network."""
        return self.net(x)

    def _masked(self, logits: torch.Tensor) -> torch.Tensor:
        if self.allowed_labels is None:
            return logits
        if self._mask is None or self._mask.shape[0] != logits.shape[1]:
            mask = torch.full((logits.shape[1],), float("-inf"), device=logits.device)
            mask[self.allowed_labels] = 0.0
            self._mask = mask
        return logits + self._mask

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment == "none":
            return x
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.augment == "flip_shift" and self.shift > 0:
            b, _, h, w = x.shape
            s = self.shift
            padded = F.pad(x, (s, s, s, s))
            dy = torch.randint(0, 2 * s + 1, (b,), device=x.device)
            dx = torch.randint(0, 2 * s + 1, (b,), device=x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            bidx = torch.arange(b, device=x.device)[:, None, None, None]
            cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[bidx, cidx, rows, cols]
        return x

    def on_train_start(self) -> None:
        """Remember the starting weights for the FedProx term."""
        if self.prox_mu > 0:
            self._anchor = [p.detach().clone() for p in self.net.parameters()]

    def proximal_term(self) -> torch.Tensor:
        """``prox_mu / 2 * ||w - w_start||^2`` (0 without FedProx)."""
        if self.prox_mu == 0 or not self._anchor:
            return torch.zeros((), device=self.device)
        sq = sum(
            ((p - a) ** 2).sum() for p, a in zip(self.net.parameters(), self._anchor, strict=True)
        )
        return 0.5 * self.prox_mu * sq

    def training_step(self, batch, batch_idx):
        """Cross-entropy on one (augmented) mini-batch (plus the FedProx term); logs
        ``train_loss`` (the cross-entropy alone)."""
        x, y = batch
        x = self._augmented(x)
        loss = F.cross_entropy(self._masked(self(x)), y)
        self.log("train_loss", loss, prog_bar=False, on_step=False, on_epoch=True)
        return loss + self.proximal_term() if self.prox_mu > 0 else loss

    def configure_optimizers(self):
        """SGD (with momentum) or Adam over all parameters; exponential decay per epoch."""
        if self.optimizer_name == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        elif self.optimizer_name == "sgd":
            opt = torch.optim.SGD(
                self.parameters(),
                lr=self.lr,
                momentum=self.momentum,
                weight_decay=self.weight_decay,
            )
        else:
            raise ValueError(f"unknown optimizer {self.optimizer_name!r}; choose sgd or adam")
        if self.gamma == 1.0:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, self.gamma),
        }


@torch.no_grad()
def accuracy(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
    rt: Runtime | None = None,
) -> float:
    """Top-1 accuracy of ``net`` on in-memory tensors (eval mode, restored afterwards), on
    ``rt``'s device and precision (default: wherever ``net`` is)."""
    if len(labels) == 0:
        raise ValueError("accuracy: no examples to evaluate")
    batches = (
        (images[i : i + batch_size], labels[i : i + batch_size])
        for i in range(0, len(labels), batch_size)
    )
    return batches_accuracy(net, batches, rt)


def batches_accuracy(net: nn.Module, batches, rt: Runtime | None = None) -> float:
    """Top-1 accuracy of ``net`` over ``(inputs, labels)`` batches (a DataLoader or any
    iterable), computed by :func:`fedssl.runtime.predict` on ``rt``'s device and precision."""
    logits, y = predict(net, batches, rt)
    return (logits.argmax(1) == y).sum().item() / max(1, len(y))


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def trainable_prefixes(backbone: nn.Module, mode: str) -> tuple[str, ...]:
    """Module paths of ``backbone`` that train in ``mode`` (``("",)``: all; ``()``: none).

    ``partial`` is the backbone's last stage (the last entry of timm's ``feature_info``, e.g.
    ``layer4`` of a ResNet, ``stages.3`` of a ConvNeXt, ``blocks.11`` of a ViT) plus every
    top-level module after it that holds weights (a final norm, ``conv_head``).

    Raises:
        ValueError: unknown mode, or ``partial`` on a backbone without ``feature_info``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "full":
        return ("",)
    if mode == "linear":
        return ()
    info = getattr(backbone, "feature_info", None)
    names = [d["module"] for d in info] if isinstance(info, list) else []
    if not names:
        raise ValueError(
            f"mode 'partial' needs the backbone's stages (timm's feature_info); "
            f"{type(backbone).__name__} has none: use linear or full"
        )
    last = names[-1]
    top = [n for n, _ in backbone.named_children()]
    first = last.split(".")[0]
    after = top[top.index(first) + 1 :] if first in top else []
    later = [n for n in after if any(True for _ in getattr(backbone, n).parameters())]
    return (last, *later)


class BackboneClassifier(pl.LightningModule):
    """A backbone (pooled features, ``num_features`` wide) and a linear task head
    (``head``: feature standardisation + ``nn.Linear``).

    Args:
        backbone: e.g. a timm model with ``num_classes=0`` (see :mod:`fedssl.models.simclr`).
        num_classes: the client's classes.
        mode: ``linear``, ``partial`` or ``full`` (see :func:`trainable_prefixes`).
        optimizer: ``sgd`` (with ``momentum``), ``adam`` or ``adamw``.
        lr: the head's learning rate (cosine-annealed to 0 over the fit).
        backbone_lr_scale: the trainable backbone's learning rate is ``lr`` times this.
        momentum: SGD momentum.
        weight_decay: L2 penalty / decoupled decay.

    The batch is ``(images, labels)``; a batch of pooled features ``(B, num_features)`` may be
    given instead when ``mode == "linear"`` (set ``features_input = True``): the frozen backbone's
    features can then be computed once and reused every epoch.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        mode: str = "linear",
        optimizer: str = "sgd",
        lr: float = 0.1,
        backbone_lr_scale: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ):
        super().__init__()
        if not hasattr(backbone, "num_features"):
            raise ValueError("backbone must expose num_features (timm models do)")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {optimizer!r}; choose sgd, adam or adamw")
        self.backbone = backbone
        width = int(backbone.num_features)
        # Features are standardised before the linear layer (BatchNorm without affine, as in
        # MAE's linear probing): a frozen backbone's features can be tiny or badly scaled, and
        # at inference this is still one linear map. The running statistics that training
        # accumulates (momentum=None: the average over every batch seen) describe features of
        # backbones that no longer exist once the backbone trains, so the fit ends with
        # :meth:`calibrate_head`, which sets them to the final backbone's exact statistics.
        self.head = nn.Sequential(
            nn.BatchNorm1d(width, affine=False, momentum=None), nn.Linear(width, num_classes)
        )
        self.mode = mode
        self.trainable = trainable_prefixes(backbone, mode)
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(_under(name, self.trainable))
        self.optimizer_name, self.lr, self.backbone_lr_scale = optimizer, lr, backbone_lr_scale
        self.momentum, self.weight_decay = momentum, weight_decay
        self.features_input = False
        self.anneal = True  # cosine to 0 over one fit; False: constant lr (federated rounds)
        self.train(self.training)

    @property
    def num_classes(self) -> int:
        return self.head[1].out_features

    def train(self, mode: bool = True):
        """Set train/eval mode; frozen backbone modules always stay in eval mode."""
        super().train(mode)
        for name, m in self.backbone.named_modules():
            if name and not _under(name, self.trainable):
                m.training = False
        if not self.trainable:
            self.backbone.training = False
        return self

    @torch.no_grad()
    def calibrate_head(self, features: torch.Tensor) -> None:
        """Set the head's standardisation to the exact mean and (unbiased) variance of
        ``features`` (``(N, num_features)``: the current backbone's features of the labeled
        images), so the statistics the head is scored with are those of the final weights, in
        every mode and after every federated round."""
        bn = self.head[0]
        if features.ndim != 2 or features.shape[1] != bn.num_features:
            raise ValueError(
                f"calibrate_head: expected (N, {bn.num_features}) features, got "
                f"{tuple(features.shape)}"
            )
        f = features.double()
        bn.running_mean.copy_(f.mean(0).to(bn.running_mean))
        var = f.var(0, unbiased=True) if len(f) > 1 else torch.ones_like(f[0])
        bn.running_var.copy_(var.to(bn.running_var))
        bn.num_batches_tracked.fill_(1)

    def trainable_state_keys(self) -> list[str]:
        """State-dict names of the trainable backbone part (``backbone.*``): what a federated
        fine-tuning round shares (the head never does)."""
        return [f"backbone.{k}" for k in self.backbone.state_dict() if _under(k, self.trainable)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images (or for pooled features when ``features_input``)."""
        if self.features_input:
            return self.head(x)
        if not self.trainable:
            with torch.no_grad():
                f = self.backbone(x)
            return self.head(f)
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        """Cross-entropy on one mini-batch; logs ``train_loss``."""
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def configure_optimizers(self):
        """The optimizer over the head and the trainable backbone part; the learning rate is
        annealed to 0 over the fit (cosine) unless ``anneal`` is off."""
        groups = [{"params": list(self.head.parameters()), "lr": self.lr}]
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        if bb:
            groups.append({"params": bb, "lr": self.lr * self.backbone_lr_scale})
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(groups, momentum=self.momentum, weight_decay=self.weight_decay)
        elif self.optimizer_name == "adam":
            opt = torch.optim.Adam(groups, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        if not self.anneal:
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
