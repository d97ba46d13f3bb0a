"""VICReg (Bardes et al. 2022) from lightly's building blocks: ``BarlowTwinsProjectionHead``
(the expander), ``VICRegLoss`` and ``VICRegTransform``. Invariance, variance and covariance
terms on the two views' embeddings; no negatives, no momentum network, no predictor.
"""

from __future__ import annotations

from lightly.loss import VICRegLoss
from torch import nn

from fedssl.methods.ssl.expander import ExpanderMethod

__all__ = ["VICReg"]


class VICReg(ExpanderMethod):
    """VICReg; recipe args: ``proj_hidden``, ``proj_out`` (the expander)."""

    name = "vicreg"
    BATCH_VIEWS = ({"solarize": 0.1}, {"solarize": 0.1})  # VICRegTransform's solarize_prob

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        proj_hidden: int = 1024,
        proj_out: int = 1024,
        **base,
    ):
        super().__init__(backbone, proj_hidden, proj_out, **base)
        self.criterion = VICRegLoss()

    @classmethod
    def views(cls, **aug):
        from lightly.transforms import VICRegTransform

        return VICRegTransform(**aug)
