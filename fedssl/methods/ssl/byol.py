"""BYOL (Grill et al. 2020) from lightly's building blocks: ``BYOLProjectionHead``,
``BYOLPredictionHead``, ``NegativeCosineSimilarity``, ``update_momentum`` and ``BYOLTransform``.

The online network (backbone, projection head, prediction head) predicts the target network's
projection of the other view; the target (a momentum copy of backbone + projection head) follows
the online network by EMA after every step. Federated by default as in FedBYOL (Zhuang et al.):
the online network and predictor travel, the target stays on the client.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from torch import nn

from fedssl.methods.ssl.base import MomentumTarget, SSLMethod, momentum_copy

__all__ = ["BYOL"]


class BYOL(MomentumTarget, SSLMethod):
    """BYOL; recipe args: ``proj_hidden``, ``proj_out``, ``pred_hidden`` (head widths, reduced
    from the paper's 4096/256/4096 for small images and CPUs) and ``target_momentum`` (EMA
    coefficient of the target network per step)."""

    name = "byol"
    PARTS = {
        "backbone": ("backbone",),
        "projection_head": ("projection_head",),
        "prediction_head": ("prediction_head",),
        "target": ("backbone_momentum", "projection_head_momentum"),
    }
    TRAVELS = ("backbone", "projection_head", "prediction_head")
    BATCH_VIEWS = ({}, {"blur": 0.1, "solarize": 0.2})  # BYOLView1 / BYOLView2Transform

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        proj_hidden: int = 1024,
        proj_out: int = 128,
        pred_hidden: int = 1024,
        target_momentum: float = 0.99,
        **base,
    ):
        super().__init__(backbone, **base)
        self.projection_head = BYOLProjectionHead(self.num_features, proj_hidden, proj_out)
        self.prediction_head = BYOLPredictionHead(proj_out, pred_hidden, proj_out)
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.criterion = NegativeCosineSimilarity()
        self.target_momentum = target_momentum

    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Symmetrised negative cosine similarity of each view's prediction with the target's
        projection of the other view."""
        x = torch.cat([views[0], views[1]])
        p0, p1 = self.prediction_head(self.projection_head(self.backbone(x))).chunk(2)
        with torch.no_grad():
            z0, z1 = self.projection_head_momentum(self.backbone_momentum(x)).chunk(2)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    @classmethod
    def views(cls, **aug):
        from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

        # the paper's asymmetry: blur on view 1 only at full strength, solarize view 2
        v2 = dict(aug, gaussian_blur=0.1 * aug["gaussian_blur"])
        return BYOLTransform(BYOLView1Transform(**aug), BYOLView2Transform(**v2))
