"""Supervised classification as a LightningModule, the small networks it trains in the
supervised federated experiments (papers 000/001, non-IID), and top-1 accuracy.

``Classifier(net, ...)`` trains ``net`` (logits out) with cross-entropy. With ``allowed_labels``
the softmax runs over those labels only, so a client that never sees some classes does not push
their logits down (a label-skew remedy for federated clients; see docs/results/merge.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from fedssl.config import ExperimentConfig
from fedssl.data.client_tensors import dataset_and_splits
from fedssl.methods.optim import check_optimizer, make_optimizer
from fedssl.models.small import build_small_model
from fedssl.runtime import Runtime, predict

__all__ = ["Classifier", "build_model", "accuracy", "batches_accuracy"]


class Classifier(pl.LightningModule):
    """Cross-entropy training of a network that outputs logits.

    Args:
        net: the network; its ``state_dict`` is what federates.
        optimizer: ``sgd``, ``adam`` or ``adamw``.
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
        private: DP-SGD for this fit (:class:`fedssl.methods.dp_sgd.PrivateFit` attached to
            ``net``): the optimizer steps on clipped, noised per-sample gradients.
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
        private=None,
    ):
        super().__init__()
        if prox_mu < 0:
            raise ValueError(f"prox_mu must be >= 0, got {prox_mu}")
        self.net = net
        self.prox_mu = prox_mu
        self._anchor: list[torch.Tensor] = []
        self.optimizer_name = check_optimizer(optimizer)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.allowed_labels = (
            None if allowed_labels is None else sorted(int(a) for a in allowed_labels)
        )
        self._mask: torch.Tensor | None = None
        self.gamma = gamma
        if augment not in ("none", "flip", "flip_shift"):
            raise ValueError(f"unknown augment {augment!r}; choose none, flip or flip_shift")
        self.augment, self.shift = augment, shift
        self.private = private

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
        """SGD (with momentum) or Adam over all parameters (DP-SGD's clipping and noise
        first, when private); exponential decay per epoch."""
        opt = make_optimizer(
            self.optimizer_name, self.parameters(), self.lr, self.momentum, self.weight_decay
        )
        if self.private is not None:
            opt = self.private.optimizer(opt)
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


def build_model(cfg: ExperimentConfig) -> torch.nn.Module:
    """The configured network with the dataset's number of classes."""
    ds, _ = dataset_and_splits(cfg.data)
    m = cfg.model
    return build_small_model(
        m.name,
        ds.num_classes,
        width=m.width,
        hidden=m.hidden,
        batchnorm=m.batchnorm,
        padding=m.padding,
        dropout=m.dropout,
        depth=m.depth,
    )
