"""Backbones: any timm model as a feature extractor (optionally with a stem for small images), and
its file format (safetensors with the architecture in the metadata, so a file rebuilds its
network alone). Plain ``nn.Module``s: no Lightning, no Flower.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["build_backbone", "export_backbone", "load_backbone"]


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
