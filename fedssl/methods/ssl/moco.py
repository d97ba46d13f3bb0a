"""MoCo v2 (Chen et al. 2020) from lightly's building blocks: ``MoCoProjectionHead``,
``NTXentLoss`` with a memory bank (the queue of keys), ``update_momentum`` and
``MoCoV2Transform``.

The query network (backbone + projection head) matches each image's key, computed by the momentum
key network on the other view, against a queue of earlier keys. Federated as FedMoCo: the query
network travels; the key network and the queue stay on the client (the queue holds features of
the client's own images and never travels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from torch import nn

from fedssl.methods.ssl.base import MomentumTarget, SSLMethod, momentum_copy

__all__ = ["MoCo"]


class MoCo(MomentumTarget, SSLMethod):
    """MoCo v2; recipe args: ``proj_hidden``, ``proj_out``, ``temperature``, ``queue_size``
    (keys kept; the paper's 65,536 is more than a client's images here) and
    ``target_momentum``."""

    name = "moco"
    PARTS = {
        "backbone": ("backbone",),
        "projection_head": ("projection_head",),
        "target": ("backbone_momentum", "projection_head_momentum"),
        "queue": ("criterion",),
    }
    LOCAL_ONLY = ("queue",)
    TRAVELS = ("backbone", "projection_head")

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        proj_hidden: int = 512,
        proj_out: int = 128,
        temperature: float = 0.2,
        queue_size: int = 1024,
        target_momentum: float = 0.99,
        **base,
    ):
        super().__init__(backbone, **base)
        self.projection_head = MoCoProjectionHead(self.num_features, proj_hidden, proj_out)
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.criterion = NTXentLoss(
            temperature=temperature, memory_bank_size=(queue_size, proj_out)
        )
        self.target_momentum = target_momentum

    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """InfoNCE of the queries (view 0) against their keys (view 1) and the queue."""
        query = self.projection_head(self.backbone(views[0]))
        with torch.no_grad():
            key = self.projection_head_momentum(self.backbone_momentum(views[1]))
        return self.criterion(query, key)

    def local_extra(self) -> dict[str, torch.Tensor]:
        bank = self.criterion.memory_bank
        return {"queue.bank": bank.bank.detach().clone(), "queue.ptr": bank.bank_ptr.clone()}

    def load_local_extra(self, state: dict[str, torch.Tensor]) -> None:
        if "queue.bank" in state:
            bank = self.criterion.memory_bank
            bank.bank.copy_(state["queue.bank"])
            bank.bank_ptr.copy_(state["queue.ptr"])

    @classmethod
    def views(cls, **aug):
        from lightly.transforms import MoCoV2Transform

        return MoCoV2Transform(**aug)
