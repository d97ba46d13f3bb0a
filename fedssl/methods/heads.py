"""Stage two's module (paper 003): a client's own linear task head on the shared backbone.

``BackboneClassifier(backbone, num_classes, mode)``: ``mode`` says how much of the backbone
trains: ``linear`` (frozen: a linear probe), ``partial`` (its last stage, the paper's "minimal
retraining") or ``full``. Frozen parts stay in eval mode, so their BatchNorm statistics are the
pretrained ones. Head files: :func:`save_head` / :func:`load_head`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from fedssl.config import cosine
from fedssl.methods.optim import check_optimizer, make_optimizer

__all__ = ["BackboneClassifier", "MODES", "trainable_prefixes", "save_head", "load_head"]

#: How much of the backbone a :class:`BackboneClassifier` trains.
MODES = ("linear", "partial", "full")


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
        backbone: e.g. a timm model with ``num_classes=0`` (see :mod:`fedssl.models.backbones`).
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
        check_optimizer(optimizer)
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
        self.private = None  # DP-SGD for the next fit (fedssl.methods.dp_sgd.PrivateFit)
        self.fixed_standardisation = False
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
        if self.fixed_standardisation:
            self.head[0].training = False
        return self

    @torch.no_grad()
    def fix_standardisation(self, features: torch.Tensor | None = None) -> None:
        """Freeze the head's standardisation (eval mode: it mixes no examples of a batch) at
        the statistics of ``features`` — for a private head, features of images outside the
        labeled set, since the labeled ones' would be released without noise — or, without
        features, at the identity."""
        if features is not None and len(features) > 1:
            self.calibrate_head(features)
        else:
            bn = self.head[0]
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.num_batches_tracked.zero_()
        self.fixed_standardisation = True
        self.train(self.training)

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
        """The optimizer over the head and the trainable backbone part (DP-SGD's clipping and
        noise first, when ``private``); the learning rate is annealed to 0 over the fit
        (cosine) unless ``anneal`` is off."""
        groups = [{"params": list(self.head.parameters()), "lr": self.lr}]
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        if bb:
            groups.append({"params": bb, "lr": self.lr * self.backbone_lr_scale})
        opt = make_optimizer(self.optimizer_name, groups, self.lr, self.momentum, self.weight_decay)
        if self.private is not None:
            opt = self.private.optimizer(opt)
        if not self.anneal:
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine(step, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def save_head(module: BackboneClassifier, path: str | Path, meta: dict) -> Path:
    """Write the head (``head.*``) and, unless the backbone was frozen, the fine-tuned
    backbone (``backbone.*``) as safetensors with ``meta`` in the metadata. A frozen backbone's
    BatchNorm statistics are written too (its buffers, not its weights): the client may have
    re-estimated them on its own images (``finetune.bn: client``), and the head is only right
    on top of those."""
    from fedssl.runs import write_safetensors

    sd = module.state_dict()
    if module.mode == "linear":
        buffers = {f"backbone.{k}" for k, _ in module.backbone.named_buffers()}
        tensors = {k: v for k, v in sd.items() if k.startswith("head.") or k in buffers}
    else:
        tensors = {k: v for k, v in sd.items() if k.startswith(("head.", "backbone."))}
    return write_safetensors(path, tensors, meta)


def load_head(module: BackboneClassifier, path: str | Path) -> None:
    """Load a file written by :func:`save_head` into ``module``.

    Raises:
        ValueError: the head does not fit (another client's classes, another backbone width).
    """
    from safetensors.torch import load_file

    state = load_file(str(path))
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit this classifier: {err}") from err
    if unexpected or any(k.startswith("head.") for k in missing):
        raise ValueError(f"{path} does not fit this classifier: unexpected {unexpected[:3]}")
