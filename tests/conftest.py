"""Shared fixtures: tiny Fashion-MNIST-format data sets written as real idx .gz files."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an idx file, gzipped when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_learnable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose class is a bright 7x7 block at one of ten positions, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 5)
        images[i, 3 + 12 * r : 10 + 12 * r, 1 + 5 * q : 6 + 5 * q] = 230
    return images, labels.astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_fashion(tmp_path_factory) -> Path:
    """A folder with the four Fashion-MNIST idx .gz files: 600 train + 100 test images."""
    root = tmp_path_factory.mktemp("fashion")
    for split, n, seed in (("train", 600, 1), ("t10k", 100, 2)):
        x, y = make_learnable(n, seed)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", y)
    return root
