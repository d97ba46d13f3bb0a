"""Supervised classification as a LightningModule composed around any network.

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

__all__ = ["Classifier", "accuracy"]


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
    ):
        super().__init__()
        self.net = net
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

    def training_step(self, batch, batch_idx):
        """Cross-entropy on one (augmented) mini-batch; logs ``train_loss``."""
        x, y = batch
        x = self._augmented(x)
        loss = F.cross_entropy(self._masked(self(x)), y)
        self.log("train_loss", loss, prog_bar=False, on_step=False, on_epoch=True)
        return loss

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
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of ``net`` on in-memory tensors (eval mode, restored afterwards)."""
    if len(labels) == 0:
        raise ValueError("accuracy: no examples to evaluate")
    was_training = net.training
    net.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        correct += (
            (net(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        )
    net.train(was_training)
    return correct / len(labels)
