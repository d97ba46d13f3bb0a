"""Barlow Twins (Zbontar et al. 2021) from lightly's building blocks:
``BarlowTwinsProjectionHead``, ``BarlowTwinsLoss`` and ``BYOLTransform`` (the paper's views).
The cross-correlation of the two views' embeddings is pushed to the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import nn

from fedssl.methods.ssl.base import SSLMethod
from fedssl.methods.ssl.byol import BYOL

__all__ = ["BarlowTwins"]


class BarlowTwins(SSLMethod):
    """Barlow Twins; recipe args: ``proj_hidden``, ``proj_out`` (reduced from the paper's
    8192/8192 for CPUs) and ``redundancy_weight`` (the off-diagonal weight lambda)."""

    name = "barlowtwins"
    BATCH_VIEWS = ({}, {"blur": 0.1, "solarize": 0.2})  # BYOL's two views, as its views()
    TRAIN = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        proj_hidden: int = 1024,
        proj_out: int = 1024,
        redundancy_weight: float = 0.005,
        **base,
    ):
        super().__init__(backbone, **base)
        self.projection_head = BarlowTwinsProjectionHead(self.num_features, proj_hidden, proj_out)
        self.criterion = BarlowTwinsLoss(lambda_param=redundancy_weight)

    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        z0, z1 = self.projection_head(self.backbone(torch.cat([views[0], views[1]]))).chunk(2)
        return self.criterion(z0, z1)

    @classmethod
    def views(cls, **aug):
        return BYOL.views(**aug)
