"""Barlow Twins (Zbontar et al. 2021) from lightly's building blocks:
``BarlowTwinsProjectionHead``, ``BarlowTwinsLoss`` and ``BYOLTransform`` (the paper's views).
The cross-correlation of the two views' embeddings is pushed to the identity.
"""

from __future__ import annotations

from lightly.loss import BarlowTwinsLoss
from torch import nn

from fedssl.methods.ssl.byol import BYOL
from fedssl.methods.ssl.expander import ExpanderMethod

__all__ = ["BarlowTwins"]


class BarlowTwins(ExpanderMethod):
    """Barlow Twins; recipe args: ``proj_hidden``, ``proj_out`` (the expander) and
    ``redundancy_weight`` (the off-diagonal weight lambda)."""

    name = "barlowtwins"
    BATCH_VIEWS = ({}, {"blur": 0.1, "solarize": 0.2})  # BYOL's two views, as its views()

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        proj_hidden: int = 1024,
        proj_out: int = 1024,
        redundancy_weight: float = 0.005,
        **base,
    ):
        super().__init__(backbone, proj_hidden, proj_out, **base)
        self.criterion = BarlowTwinsLoss(lambda_param=redundancy_weight)

    @classmethod
    def views(cls, **aug):
        return BYOL.views(**aug)
