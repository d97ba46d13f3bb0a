"""SimCLR (Chen et al. 2020) from lightly's building blocks: ``SimCLRProjectionHead``,
``NTXentLoss`` and ``SimCLRTransform``, on any timm backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import nn

from fedssl.data.transforms import normalize
from fedssl.methods.optim import check_optimizer, make_optimizer
from fedssl.models.backbones import build_backbone

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


class SimCLR(pl.LightningModule):
    """SimCLR: backbone -> projection head -> NT-Xent between two views of each image.

    Args:
        backbone: a timm model name or an ``nn.Module`` with ``num_features`` (pooled features).
        in_chans: image channels (for a backbone given by name).
        small_input: ResNet stem for small images (for a backbone given by name).
        proj_hidden: projection head hidden width.
        proj_out: projection output width.
        temperature: NT-Xent temperature.
        optimizer: ``sgd`` (momentum 0.9), ``adam`` or ``adamw``.
        lr: learning rate.
        weight_decay: L2 penalty.

    The batch is ``(views, labels)`` with ``views`` a list of two image tensors (what lightly's
    transforms produce); labels are ignored.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        in_chans: int = 3,
        small_input: bool = False,
        proj_hidden: int = 512,
        proj_out: int = 128,
        temperature: float = 0.5,
        optimizer: str = "sgd",
        lr: float = 0.06,
        weight_decay: float = 5e-4,
    ):
        super().__init__()
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, in_chans=in_chans, small_input=small_input)
        if not hasattr(backbone, "num_features"):
            raise ValueError("backbone must expose num_features (timm models do)")
        check_optimizer(optimizer)
        self.backbone = backbone
        self.backbone_in_chans = in_chans
        self.projection_head = SimCLRProjectionHead(
            int(backbone.num_features), proj_hidden, proj_out
        )
        self.criterion = NTXentLoss(temperature=temperature)
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, num_features)``."""
        return self.backbone(x)

    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """NT-Xent loss of the first two views."""
        x0, x1 = views[0], views[1]
        z = self.projection_head(self.backbone(torch.cat([x0, x1])))
        z0, z1 = z.chunk(2)
        return self.criterion(z0, z1)

    def training_step(self, batch, batch_idx):
        """NT-Xent on one batch of view pairs; logs ``train_loss``."""
        views = batch[0]
        loss = self.loss(views)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(views[0]))
        return loss

    def configure_optimizers(self):
        """The configured optimizer at ``self.lr`` (the round's learning rate is set by the
        caller, see :func:`fedssl.config.round_lr`)."""
        return make_optimizer(
            self.optimizer_name, self.parameters(), self.lr, 0.9, self.weight_decay
        )
