"""SimCLR as a LightningModule: a timm backbone, lightly's projection head, NT-Xent loss, views.

Paper 003 (stage one): every client trains this module on its unlabeled images; the backbone and
projection head travel (``fedssl.federation.records.SHARED_KEYS["pretrain"]``) and are merged by
FedAvg.

The backbone is ``timm.create_model(name, num_classes=0, in_chans=...)``: any timm name works
(``resnet50`` in the paper config). ``small_input=True`` adapts a ResNet-family stem to small
images (a 3x3 stride-1 first convolution, no max-pool), the usual CIFAR-style change.

Views come from lightly's ``SimCLRTransform``; :func:`simclr_transform` picks settings that also
suit 28x28 single-channel images (no blur, no grayscale, one-channel normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import nn

__all__ = [
    "SimCLR",
    "build_backbone",
    "simclr_transform",
    "eval_transform",
    "export_backbone",
    "load_backbone",
]


def build_backbone(
    name: str, in_chans: int = 3, small_input: bool = False, pretrained: bool = False
) -> nn.Module:
    """A timm feature extractor (``num_classes=0``: pooled features out, ``num_features`` wide).

    Args:
        name: any ``timm.list_models()`` name, e.g. ``resnet18``, ``resnet50``, ``vit_tiny_...``.
        in_chans: image channels (1 for MNIST-like data).
        small_input: replace a ResNet-style stem (``conv1`` + ``maxpool``) by a 3x3 stride-1
            convolution without pooling, for 28-32 px images.
        pretrained: load timm's pretrained weights (needs internet or a local HF cache).

    Raises:
        ValueError: unknown timm name, or ``small_input`` on a model without a ResNet stem.
    """
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"unknown timm model {name!r}; see timm.list_models() (e.g. resnet18, resnet50)"
        )
    net = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans)
    if small_input:
        conv1 = getattr(net, "conv1", None)
        if not isinstance(conv1, nn.Conv2d) or not hasattr(net, "maxpool"):
            raise ValueError(
                f"small_input needs a ResNet-style stem (conv1 + maxpool); {name!r} has none"
            )
        net.conv1 = nn.Conv2d(in_chans, conv1.out_channels, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net


def _normalize(in_chans: int) -> dict[str, list[float]]:
    if in_chans == 1:
        return {"mean": [0.5], "std": [0.5]}
    return {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


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
        normalize=_normalize(in_chans),
    )


def eval_transform(image_size: int, in_chans: int):
    """Deterministic transform for feature extraction (resize, tensor, same normalisation)."""
    import torchvision.transforms as T

    norm = _normalize(in_chans)
    return T.Compose(
        [
            T.Resize(image_size),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(norm["mean"], norm["std"]),
        ]
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
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {optimizer!r}; choose sgd, adam or adamw")
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
        params = self.parameters()
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


def export_backbone(
    state: dict[str, torch.Tensor], path: str | Path, meta: dict[str, str | int | bool]
) -> Path:
    """Write the ``backbone.*`` weights of a SimCLR state dict (prefix removed) as safetensors.

    ``meta`` (timm name, in_chans, small_input, image_size, round ...) is stored in the file's
    metadata, so :func:`load_backbone` can rebuild the network from the file alone.
    """
    from fedssl.runs import write_safetensors

    tensors = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    if not tensors:
        raise ValueError("export_backbone: the state dict holds no 'backbone.' keys")
    return write_safetensors(path, tensors, meta)


def load_backbone(path: str | Path) -> tuple[nn.Module, dict[str, str]]:
    """Rebuild a backbone written by :func:`export_backbone`; returns ``(module, metadata)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file's metadata lacks the architecture, or the weights do not fit it.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no backbone file at {p}")
    with safe_open(str(p), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if "backbone" not in meta:
        raise ValueError(f"{p} has no 'backbone' metadata: not written by fedssl export_backbone")
    net = build_backbone(
        meta["backbone"],
        in_chans=int(meta.get("in_chans", 3)),
        small_input=meta.get("small_input", "False") == "True",
    )
    state = load_file(str(p))
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{p} does not fit {meta['backbone']!r}: {err}") from err
    if missing or unexpected:
        raise ValueError(
            f"{p} does not fit {meta['backbone']!r}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return net, meta
