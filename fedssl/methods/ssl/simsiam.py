"""SimSiam (Chen & He 2021) from lightly's building blocks: ``SimSiamProjectionHead``,
``SimSiamPredictionHead``, ``NegativeCosineSimilarity`` and ``SimSiamTransform``.

Like BYOL without a momentum network: the stop-gradient on the other view's projection is the
target. Every part travels by default (FedSimSiam in Zhuang et al.).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
from torch import nn

from fedssl.methods.ssl.base import SSLMethod

__all__ = ["SimSiam"]


class SimSiam(SSLMethod):
    """SimSiam; recipe args: ``proj_hidden``, ``proj_out``, ``pred_hidden`` (head widths,
    reduced from the paper's 2048/2048/512 for small images and CPUs)."""

    name = "simsiam"
    PARTS = {
        "backbone": ("backbone",),
        "projection_head": ("projection_head",),
        "prediction_head": ("prediction_head",),
    }
    TRAVELS = ("backbone", "projection_head", "prediction_head")

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        proj_hidden: int = 512,
        proj_out: int = 512,
        pred_hidden: int = 128,
        **base,
    ):
        super().__init__(backbone, **base)
        self.projection_head = SimSiamProjectionHead(self.num_features, proj_hidden, proj_out)
        self.prediction_head = SimSiamPredictionHead(proj_out, pred_hidden, proj_out)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        z0, z1 = self.projection_head(self.backbone(torch.cat([views[0], views[1]]))).chunk(2)
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))

    @classmethod
    def views(cls, **aug):
        from lightly.transforms import SimSiamTransform

        return SimSiamTransform(**aug)
