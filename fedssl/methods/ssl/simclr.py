"""SimCLR (Chen et al. 2020) from lightly's building blocks: ``SimCLRProjectionHead``,
``NTXentLoss`` and ``SimCLRTransform``, on any timm backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from fedssl.methods.ssl.base import SSLMethod

__all__ = ["SimCLR"]


class SimCLR(SSLMethod):
    """SimCLR: backbone -> projection head -> NT-Xent between two views of each image.

    Args (beyond :class:`~fedssl.methods.ssl.base.SSLMethod`'s, the recipe):
        proj_hidden: projection head hidden width.
        proj_out: projection output width.
        proj_layers: projection head layers (2: SimCLR v1; 3: SimCLR v2's deeper head), each
            hidden layer with BatchNorm.
        temperature: NT-Xent temperature.

    The batch is ``(views, labels)`` with ``views`` a list of two image tensors (what lightly's
    transforms produce); labels are ignored.
    """

    name = "simclr"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        proj_hidden: int = 512,
        proj_out: int = 128,
        proj_layers: int = 2,
        temperature: float = 0.5,
        **base,
    ):
        super().__init__(backbone, **base)
        if int(proj_layers) < 2:
            raise ValueError(f"model.proj_layers must be 2 or more, got {proj_layers}")
        self.projection_head = SimCLRProjectionHead(
            self.num_features, proj_hidden, proj_out, num_layers=int(proj_layers)
        )
        self.criterion = NTXentLoss(temperature=temperature)

    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """NT-Xent loss of the first two views."""
        z = self.projection_head(self.backbone(torch.cat([views[0], views[1]])))
        z0, z1 = z.chunk(2)
        return self.criterion(z0, z1)
