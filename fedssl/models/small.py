"""Small networks for the plain-CNN experiments: the seed papers' CNN and an MLP.

Papers 000/001 describe their CNN only as "two convolution + pooling layers and a fully connected
layer, ReLU" (the figure with sizes is not in the text). fedssl's reading, ``PaperCNN``:

    conv3x3(1 -> w) -> ReLU -> maxpool2 -> conv3x3(w -> 2w) -> ReLU -> maxpool2
    -> flatten -> linear(2w*5*5 -> hidden) -> ReLU -> linear(hidden -> classes)

with ``w = 32``, ``hidden = 128`` by default (about 225k parameters). Options (all off by
default, so the default is the plain reading): ``padding=True`` keeps 28x28 through the first
convolution ("same" padding, 7x7 maps before the classifier), BatchNorm after each convolution,
dropout before each linear layer, and ``depth=2`` for two convolutions before each pooling (a
small VGG-style network; still two conv+pool *blocks*, but no longer the papers' two
convolutions).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PaperCNN", "MLP", "build_small_model"]


class PaperCNN(nn.Module):
    """Two conv+pool blocks and a two-layer classifier for 28x28 single-channel images.

    Args:
        num_classes: output logits.
        width: channels of the first convolution (the second has ``2 * width``).
        hidden: units of the hidden fully connected layer.
        batchnorm: add BatchNorm2d after each convolution.
        in_channels: image channels.
        padding: "same" padding in every convolution.
        dropout: dropout probability before each linear layer.
        depth: convolutions per block (1: the papers' reading).
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 32,
        hidden: int = 128,
        batchnorm: bool = False,
        in_channels: int = 1,
        padding: bool = False,
        dropout: float = 0.0,
        depth: int = 1,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (convolutions per block), got {depth}")
        pad = 1 if padding else 0
        # Without padding each 3x3 convolution trims 2 pixels: 28 -> (28-2d)/2 -> ((..)-2d)/2.
        side = 7 if padding else ((28 - 2 * depth) // 2 - 2 * depth) // 2
        if side < 1:
            raise ValueError(f"depth {depth} without padding leaves no pixels; set padding=True")

        def block(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for i in range(depth):
                layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=pad))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(nn.ReLU(inplace=True))
            return [*layers, nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(in_channels, width), *block(width, 2 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * width * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch ``(B, C, 28, 28)``."""
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Flatten -> [linear -> ReLU] x 2 -> linear (paper 004's plain MLP).

    Args:
        num_classes: output logits.
        hidden: units of each hidden layer.
        in_features: flattened input size.
    """

    def __init__(self, num_classes: int = 10, hidden: int = 200, in_features: int = 784):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        return self.net(x)


def build_small_model(
    name: str,
    num_classes: int,
    width: int = 32,
    hidden: int = 128,
    batchnorm: bool = False,
    padding: bool = False,
    dropout: float = 0.0,
    depth: int = 1,
) -> nn.Module:
    """Build ``paper_cnn`` or ``mlp`` by name.

    Raises:
        ValueError: unknown name.
    """
    if name == "paper_cnn":
        return PaperCNN(
            num_classes,
            width=width,
            hidden=hidden,
            batchnorm=batchnorm,
            padding=padding,
            dropout=dropout,
            depth=depth,
        )
    if name == "mlp":
        return MLP(num_classes, hidden=hidden)
    raise ValueError(f"unknown model {name!r}; choose paper_cnn or mlp")
