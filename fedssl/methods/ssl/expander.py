"""What Barlow Twins and VICReg share: both views through the backbone and lightly's
``BarlowTwinsProjectionHead`` (the expander, reduced from the papers' 8192 / 8192 for CPUs),
one loss on the two embeddings, and AdamW (:data:`~fedssl.methods.ssl.base.ADAMW_RECIPE`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import nn

from fedssl.methods.ssl.base import ADAMW_RECIPE, SSLMethod

__all__ = ["ExpanderMethod"]


class ExpanderMethod(SSLMethod):
    """Backbone + expander on two views, compared by ``criterion`` (set by the subclass)."""

    TRAIN = ADAMW_RECIPE
    criterion: nn.Module

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        proj_hidden: int = 1024,
        proj_out: int = 1024,
        **base,
    ):
        super().__init__(backbone, **base)
        self.projection_head = BarlowTwinsProjectionHead(self.num_features, proj_hidden, proj_out)

    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        z0, z1 = self.projection_head(self.backbone(torch.cat([views[0], views[1]]))).chunk(2)
        return self.criterion(z0, z1)
