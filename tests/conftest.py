"""Shared fixtures: tiny Fashion-MNIST-format data sets written as real idx .gz files."""

import gzip
import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

LAUNCH_DIR = Path(__file__).resolve().parents[1] / "launch"
BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_launch(name: str):
    spec = importlib.util.spec_from_file_location(f"launch_{name}", LAUNCH_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_benchmark(name: str):
    if str(BENCH_DIR) not in sys.path:  # as `python benchmarks/<name>.py` does: `import harness`
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)`` imports ``benchmarks/<name>.py`` as a module, with the
    benchmarks folder on the path as when it runs as a script."""
    return _load_benchmark


@pytest.fixture(scope="session")
def load_launch():
    """``load_launch(name)`` imports ``launch/<name>.py`` as a module (the launch scripts are
    not a package)."""
    return _load_launch


def pytest_configure(config):
    """Decoded images go to a folder of this test run, not the user's cache
    (fedssl.data.disk_cache; launchers the tests start inherit it)."""
    import os
    import tempfile

    os.environ.setdefault("FEDSSL_DECODED_CACHE", tempfile.mkdtemp(prefix="fedssl-decoded-"))


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


def _write_jpgs(folder: Path, n: int, seed: int, size: tuple[int, int]) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        p = folder / f"image_{i + 1:05d}.jpg"
        Image.fromarray(arr).save(p, quality=80)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def tiny_flowers(tmp_path_factory) -> Path:
    """Oxford Flowers102's on-disk format: jpg/image_XXXXX.jpg, imagelabels.mat, setid.mat.

    30 images of 3 classes (labels 1-based as in the real file); trnid 1-9, valid 10-15,
    tstid 16-30.
    """
    from scipy.io import savemat

    root = tmp_path_factory.mktemp("flowers") / "flowers-102"
    _write_jpgs(root / "jpg", 30, seed=3, size=(40, 32))
    labels = (np.arange(30) % 3 + 1).reshape(1, -1)
    savemat(root / "imagelabels.mat", {"labels": labels})
    savemat(
        root / "setid.mat",
        {
            "trnid": np.arange(1, 10).reshape(1, -1),
            "valid": np.arange(10, 16).reshape(1, -1),
            "tstid": np.arange(16, 31).reshape(1, -1),
        },
    )
    return root.parent


@pytest.fixture(scope="session")
def tiny_intel(tmp_path_factory) -> Path:
    """The Kaggle Intel Image Classification layout: seg_train/seg_train/<class>/*.jpg and
    seg_test/seg_test/<class>/*.jpg, 4 train + 2 test images per class."""
    root = tmp_path_factory.mktemp("intel")
    classes = ("buildings", "forest", "glacier", "mountain", "sea", "street")
    for k, c in enumerate(classes):
        _write_jpgs(root / "seg_train" / "seg_train" / c, 4, seed=10 + k, size=(36, 36))
        _write_jpgs(root / "seg_test" / "seg_test" / c, 2, seed=20 + k, size=(36, 36))
    return root


@pytest.fixture
def tiny_pretrain(tiny_fashion):
    """``overrides(out_dir, name)``: stage one on the tiny Fashion-MNIST files, split over two
    clients, with timm's ``test_resnet`` — seconds per round on a CPU."""
    return lambda out_dir, name: _tiny_pretrain_overrides(tiny_fashion, out_dir, name)


def _tiny_pretrain_overrides(data_root, out_dir, name: str) -> list[str]:
    return [
        f"name={name}",
        f"out_dir={out_dir}",
        f"data.root={data_root}",
        "data.clients=[fashion_mnist,fashion_mnist]",
        "data.max_per_client=240",
        "model.backbone=test_resnet",
        "model.proj_hidden=32",
        "model.proj_out=16",
        "train.batch_size=32",
        "train.local_steps=3",
        "ssl.knn_queries=60",
        "federation.rounds=1",
        "tracking.wandb=disabled",
    ]
