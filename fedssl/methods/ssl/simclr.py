"""SimCLR (Chen et al. 2020) from lightly's building blocks: ``SimCLRProjectionHead``,
``NTXentLoss`` and ``SimCLRTransform``, on any timm backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import nn

from fedssl.data.transforms import normalize
from fedssl.methods.ssl.base import SSLMethod

__all__ = ["SimCLR", "simclr_transform"]


def simclr_transform(
    image_size: int,
    in_chans: int,
    min_scale: float = 0.08,
    cj_prob: float = 0.8,
    cj_strength: float = 0.5,
    hf_prob: float = 0.5,
    rr_prob: float = 0.0,
    rr_degrees: float = 0.0,
    gaussian_blur: float | None = None,
    random_gray_scale: float | None = None,
) -> SimCLRTransform:
    """lightly's ``SimCLRTransform`` (two views per image) for this image size and channel count.

    Blur defaults to SimCLR's 0.5 for images of 64 px and more and to 0 below (a 28 px image has
    little to blur); grayscale conversion is off for single-channel images. ``rr_prob`` > 0
    rotates a view by up to ``rr_degrees`` either way with that probability.

    Raises:
        ValueError: ``rr_prob`` > 0 without a positive ``rr_degrees`` (a silent no-op otherwise).
    """
    if rr_prob > 0 and not rr_degrees > 0:
        raise ValueError(f"rr_prob={rr_prob} needs rr_degrees > 0 (got {rr_degrees})")
    if gaussian_blur is None:
        gaussian_blur = 0.5 if image_size >= 64 else 0.0
    if random_gray_scale is None:
        random_gray_scale = 0.2 if in_chans == 3 else 0.0
    return SimCLRTransform(
        input_size=image_size,
        cj_prob=cj_prob,
        cj_strength=cj_strength,
        min_scale=min_scale,
        random_gray_scale=random_gray_scale,
        gaussian_blur=gaussian_blur,
        hf_prob=hf_prob,
        rr_prob=rr_prob,
        rr_degrees=rr_degrees if rr_prob > 0 else None,
        normalize=normalize(in_chans),
    )


class SimCLR(SSLMethod):
    """SimCLR: backbone -> projection head -> NT-Xent between two views of each image.

    Args (beyond :class:`~fedssl.methods.ssl.base.SSLMethod`'s, the recipe):
        proj_hidden: projection head hidden width.
        proj_out: projection output width.
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
        temperature: float = 0.5,
        **base,
    ):
        super().__init__(backbone, **base)
        self.projection_head = SimCLRProjectionHead(self.num_features, proj_hidden, proj_out)
        self.criterion = NTXentLoss(temperature=temperature)

    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """NT-Xent loss of the first two views."""
        z = self.projection_head(self.backbone(torch.cat([views[0], views[1]])))
        z0, z1 = z.chunk(2)
        return self.criterion(z0, z1)
