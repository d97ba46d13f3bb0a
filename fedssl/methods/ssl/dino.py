"""DINO (Caron et al. 2021) from lightly's building blocks: ``DINOProjectionHead``,
``DINOLoss``, ``update_momentum`` and ``DINOTransform`` (two global crops and small local crops).

The student (backbone + head) matches the teacher's sharpened, centred output on the global crops
from every crop; the teacher is a momentum copy of the student. The student travels; the teacher
and the loss's centre (a running mean of the client's own teacher outputs) stay on the client.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad
from torch import nn

from fedssl.methods.ssl.base import ADAMW_RECIPE, MomentumTarget, SSLMethod, momentum_copy

__all__ = ["DINO"]


class DINO(MomentumTarget, SSLMethod):
    """DINO; recipe args: ``proj_hidden``, ``proj_out`` (the bottleneck), ``prototypes`` (the
    output width; the paper's 65,536 is far more than needed for ten classes),
    ``teacher_temperature``, ``target_momentum``, ``local_views`` (small crops per image) and
    ``head_batch_norm``.

    ``head_batch_norm`` (BatchNorm after the head's hidden layers, lightly's ``batch_norm``;
    the paper's ViT recipe has none) is on by default: on the small-image ResNets a randomly
    initialised network gives every image nearly the same output, the sharpened teacher then
    picks the same prototype for all of them, and without it the loss fell to 0.05 within
    three SGD steps (one prototype for every image) before the centring turned that into the
    uniform collapse (loss = ln(prototypes)); with it the loss starts at ln(prototypes) and
    falls (``tests/models/test_ssl_methods.py`` shows both; results/ssl-methods.md notes it)."""

    name = "dino"
    TRAIN = ADAMW_RECIPE
    PARTS = {
        "backbone": ("backbone",),
        "projection_head": ("projection_head",),
        "target": ("backbone_momentum", "projection_head_momentum"),
        "center": ("criterion",),
    }
    LOCAL_ONLY = ("center",)
    TRAVELS = ("backbone", "projection_head")
    BATCH_VIEWS = None  # global and local crops of two sizes: lightly's DINOTransform only

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        proj_hidden: int = 512,
        proj_out: int = 128,
        prototypes: int = 1024,
        teacher_temperature: float = 0.04,
        target_momentum: float = 0.99,
        local_views: int = 2,
        head_batch_norm: bool = True,
        **base,
    ):
        super().__init__(backbone, **base)
        widths = (self.num_features, proj_hidden, proj_out, prototypes)
        self.projection_head = DINOProjectionHead(*widths, batch_norm=head_batch_norm)
        self.backbone_momentum = momentum_copy(self.backbone)
        # the head's weight-normalised last layer cannot be deep-copied: build a twin, copy
        self.projection_head_momentum = DINOProjectionHead(*widths, batch_norm=head_batch_norm)
        self.projection_head_momentum.load_state_dict(self.projection_head.state_dict())
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = DINOLoss(
            output_dim=prototypes,
            warmup_teacher_temp=teacher_temperature,
            teacher_temp=teacher_temperature,
        )
        self.target_momentum = target_momentum
        self.teacher_temperature = teacher_temperature
        self.local_views = local_views

    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the student on every crop against the teacher on the two global
        crops (views 0 and 1)."""
        with torch.no_grad():
            teacher = [self.projection_head_momentum(self.backbone_momentum(v)) for v in views[:2]]
        student = [self.projection_head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student, teacher_temp=self.teacher_temperature)

    @classmethod
    def views(cls, local_views: int = 2, **aug):
        from lightly.transforms import DINOTransform

        size, blur = aug["input_size"], aug["gaussian_blur"]
        return DINOTransform(
            global_crop_size=size,
            global_crop_scale=(aug["min_scale"], 1.0),
            local_crop_size=max(8, size * 3 // 7),
            local_crop_scale=(0.05, aug["min_scale"]),
            n_local_views=local_views,
            hf_prob=aug["hf_prob"],
            rr_prob=aug["rr_prob"],
            rr_degrees=aug["rr_degrees"],
            cj_prob=aug["cj_prob"],
            cj_strength=aug["cj_strength"],
            random_gray_scale=aug["random_gray_scale"],
            gaussian_blur=(blur, 0.1 * blur, 0.5 * blur),
            solarization_prob=0.2 if aug["random_gray_scale"] > 0 else 0.0,
            normalize=aug["normalize"],
        )
