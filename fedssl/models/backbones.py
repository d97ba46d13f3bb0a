"""Backbones: any timm model as a feature extractor (optionally with a stem for small images),
fedssl's small-image ResNets, and the file format (safetensors with the architecture in the
metadata, so a file rebuilds its network alone). Plain ``nn.Module``s: no Lightning, no Flower.

**Small-image ResNets** ``sresnet<depth>_w<width>`` (depth 10, 18 or 34; e.g. ``sresnet18_w32``):
timm's ResNet with stage widths ``(w, 2w, 4w, 8w)`` and a stem that keeps the resolution (one
3x3 stride-1 convolution, no max-pool), so a 28 px image is seen at 28, 14, 7 and 4 px by the four
stages, where ``resnet18``'s ImageNet stem leaves 7, 4, 2 and 1 px. On a 28 px grayscale image
``sresnet18_w16`` costs 29 M multiply-accumulates and ``sresnet10_w16`` 13 M, against 33 M for
``resnet18`` and 456 M for ``resnet18`` with ``small_input`` (:func:`macs_per_image`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "build_backbone",
    "export_backbone",
    "load_backbone",
    "macs_per_image",
    "RawPixels",
    "SMALL_RESNET",
    "check_backbone_name",
]

#: the name pattern of fedssl's small-image ResNets
SMALL_RESNET = re.compile(r"^sresnet(10|18|34)_w(\d+)$")
_DEPTHS = {"10": (1, 1, 1, 1), "18": (2, 2, 2, 2), "34": (3, 4, 6, 3)}


class RawPixels(nn.Module):
    """No backbone at all: the image's pixels, flattened (``num_features = C * H * W``). The
    baseline a learned representation must beat (stage two's ``finetune.backbone: pixels``)."""

    def __init__(self, in_chans: int, image_size: int):
        super().__init__()
        self.num_features = in_chans * image_size * image_size
        self.in_chans, self.image_size = in_chans, image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.in_chans, self.image_size, self.image_size):
            raise ValueError(
                f"RawPixels expects ({self.in_chans}, {self.image_size}, {self.image_size}) "
                f"images, got {tuple(x.shape[1:])}"
            )
        return x.flatten(1)


def _check_width(width: int) -> None:
    if not 4 <= width <= 256 or width % 2:
        raise ValueError(f"sresnet width must be even and in 4..256, got {width}")


def check_backbone_name(name: str) -> None:
    """Check a backbone name without building it: a small-image ResNet (valid width) or a timm
    model.

    Raises:
        ValueError: names what is wrong, with close timm names where there are some.
    """
    import timm

    small = SMALL_RESNET.match(name)
    if small:
        _check_width(int(small.group(2)))
        return
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:6]}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ValueError(
            f"{name!r} is neither a timm model{hint} (see timm.list_models()) nor a small-image "
            "ResNet sresnet<10|18|34>_w<width>"
        )


def _small_resnet(depth: str, width: int, in_chans: int) -> nn.Module:
    from timm.models.resnet import BasicBlock, ResNet

    _check_width(width)
    # timm's "deep" stem ends at 2 * stem_width channels: that is what the first stage (and bn1)
    # receive; the stem's convolutions are then replaced by one 3x3 stride-1 convolution.
    net = ResNet(
        BasicBlock,
        _DEPTHS[depth],
        num_classes=0,
        in_chans=in_chans,
        stem_width=width // 2,
        stem_type="deep",
        channels=(width, 2 * width, 4 * width, 8 * width),
    )
    net.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def build_backbone(
    name: str, in_chans: int = 3, small_input: bool = False, pretrained: bool = False
) -> nn.Module:
    """A timm feature extractor (``num_classes=0``: pooled features out, ``num_features`` wide).

    Args:
        name: any ``timm.list_models()`` name, e.g. ``resnet18``, ``resnet50``, ``vit_tiny_...``,
            or a small-image ResNet ``sresnet<10|18|34>_w<width>`` (see the module docstring).
        in_chans: image channels (1 for MNIST-like data).
        small_input: replace a ResNet-style stem (``conv1`` + ``maxpool``) by a 3x3 stride-1
            convolution without pooling, for 28-32 px images.
        pretrained: load timm's pretrained weights (needs internet or a local HF cache).

    Raises:
        ValueError: unknown timm name, or ``small_input`` on a model without a ResNet stem.
    """
    import timm

    small = SMALL_RESNET.match(name)
    if small:
        if pretrained:
            raise ValueError(f"{name!r} has no pretrained weights")
        return _small_resnet(small.group(1), int(small.group(2)), in_chans)
    if not timm.is_model(name):
        raise ValueError(
            f"unknown model {name!r}: neither a timm model (see timm.list_models(), e.g. "
            "resnet18, resnet50) nor a small-image ResNet sresnet<10|18|34>_w<width>"
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


def macs_per_image(net: nn.Module, image_size: int, in_chans: int) -> int:
    """Multiply-accumulates of one forward pass on one ``image_size`` px image (counted by
    ``torch.utils.flop_counter``: FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, in_chans, image_size, image_size))
    finally:
        net.train(was_training)
    return int(counter.get_total_flops()) // 2


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


def load_backbone(
    path: str | Path, client: str | None = None, partition: int | None = None
) -> tuple[nn.Module, dict[str, str]]:
    """Rebuild a backbone written by :func:`export_backbone`; returns ``(module, metadata)``.

    A stage one whose clients kept some layers (``ssl.local_layers``) exports only the shared
    layers: ``client`` (a dataset name of that run; ``partition``: its position among the run's
    clients, needed where the dataset is more than one client) completes them with that
    client's own, from its state file beside the backbone (``clients/client<pid>.safetensors``).

    Raises:
        FileNotFoundError: no such file, or no state file of ``client`` beside it.
        ValueError: the file's metadata lacks the architecture, the weights do not fit it, or
            layers stayed on the clients and ``client`` is not one of them.
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
    missing = set(net.state_dict()) - set(state)
    if missing and meta.get("local_layers"):  # (a centralized reference's file is whole)
        state.update(_clients_own_layers(p, meta, client, partition, missing))
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


def _clients_own_layers(
    path: Path,
    meta: dict[str, str],
    client: str | None,
    partition: int | None,
    missing: set[str],
) -> dict[str, torch.Tensor]:
    """The layers ``client`` kept in a stage one with ``ssl.local_layers`` (from its state
    file beside the shared backbone ``path``), named as in the backbone."""
    from safetensors.torch import load_file

    clients = meta.get("local_clients", "").split(",")
    what = (
        f"{path} is the shared part of a backbone whose layers {meta['local_layers']} stayed "
        f"on each client (ssl.local_layers)"
    )
    if client is None or client not in clients:
        raise ValueError(
            f"{what}: a head needs one client's own layers; name one of that run's clients "
            f"({', '.join(clients)})"
        )
    if partition is None:
        if clients.count(client) > 1:
            raise ValueError(
                f"{what}: {client!r} is more than one of its clients ({clients}); name the "
                "client by its position"
            )
        partition = clients.index(client)
    elif not (0 <= partition < len(clients) and clients[partition] == client):
        raise ValueError(f"{what}: its client {partition} is not {client!r} ({clients})")
    own = path.parent / "clients" / f"client{partition}.safetensors"
    if not own.is_file():
        raise FileNotFoundError(f"{what}: {client}'s own layers are not here ({own} is missing)")
    saved = load_file(str(own))
    return {k: saved["backbone." + k] for k in missing if "backbone." + k in saved}
