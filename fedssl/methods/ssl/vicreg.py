"""VICReg (Bardes et al. 2022) from lightly's building blocks: ``BarlowTwinsProjectionHead``
(the expander), ``VICRegLoss`` and ``VICRegTransform``. Invariance, variance and covariance
terms on the two views' embeddings; no negatives, no momentum network, no predictor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import VICRegLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import nn

from fedssl.methods.ssl.base import SSLMethod

__all__ = ["VICReg"]


class VICReg(SSLMethod):
    """VICReg; recipe args: ``proj_hidden``, ``proj_out`` (the expander, reduced from the
    paper's 8192/8192 for CPUs)."""

    name = "vicreg"
    BATCH_VIEWS = ({"solarize": 0.1}, {"solarize": 0.1})  # VICRegTransform's solarize_prob
    TRAIN = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        proj_hidden: int = 1024,
        proj_out: int = 1024,
        **base,
    ):
        super().__init__(backbone, **base)
        self.projection_head = BarlowTwinsProjectionHead(self.num_features, proj_hidden, proj_out)
        self.criterion = VICRegLoss()

    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        z0, z1 = self.projection_head(self.backbone(torch.cat([views[0], views[1]]))).chunk(2)
        return self.criterion(z0, z1)

    @classmethod
    def views(cls, **aug):
        from lightly.transforms import VICRegTransform

        return VICRegTransform(**aug)
