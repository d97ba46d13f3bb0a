"""Decoded images kept on disk for the next process (fedssl.data.disk_cache): read back instead
of decoded, decoded again when the files change or the stored copy is damaged, never written
when turned off, and a folder that cannot be written costs nothing but the speed."""

import os

import numpy as np
import pytest
import torch

from fedssl.data import cache, disk_cache
from fedssl.data.cache import cached_images, decode
from fedssl.data.datasets import build_dataset, read_idx
from tests.conftest import write_idx


@pytest.fixture(autouse=True)
def _own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.ENV, str(tmp_path / "decoded"))
    cache.clear()
    yield
    cache.clear()


def _counting(fn, calls):
    def wrapped(*a):
        calls.append(a)
        return fn(*a)

    return wrapped


def test_a_gzipped_idx_file_is_read_back_until_it_changes(tmp_path):
    f = tmp_path / "images-idx3-ubyte.gz"
    a = np.random.default_rng(0).integers(0, 256, (7, 5, 5), dtype=np.uint8)
    write_idx(f, a)
    calls = []
    first = disk_cache.idx_array(f, _counting(read_idx, calls))
    again = disk_cache.idx_array(f, _counting(read_idx, calls))
    assert len(calls) == 1 and np.array_equal(first, a) and np.array_equal(again, a)
    b = a[::-1].copy()
    write_idx(f, b)
    os.utime(f, ns=(1, 1))  # a new modification time even on a coarse clock
    assert np.array_equal(disk_cache.idx_array(f, _counting(read_idx, calls)), b)
    assert len(calls) == 2


def test_off_writes_nothing_and_reads_every_time(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.ENV, "off")
    f = tmp_path / "x.gz"
    write_idx(f, np.zeros((2, 3, 3), dtype=np.uint8))
    calls = []
    for _ in range(2):
        disk_cache.idx_array(f, _counting(read_idx, calls))
    assert len(calls) == 2
    assert disk_cache.folder() is None and not (tmp_path / "decoded").exists()


def test_a_damaged_copy_is_decoded_again_and_replaced(tmp_path):
    f = tmp_path / "y.gz"
    a = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    write_idx(f, a)
    disk_cache.idx_array(f, read_idx)
    (stored,) = (tmp_path / "decoded" / "idx").glob("*.npy")
    stored.write_bytes(b"\x93NUMPY garbage")
    calls = []
    assert np.array_equal(disk_cache.idx_array(f, _counting(read_idx, calls)), a)
    assert len(calls) == 1
    assert np.array_equal(np.load(stored, allow_pickle=False), a)  # replaced by a good copy


def test_a_folder_that_cannot_be_written_only_costs_speed(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(disk_cache.ENV, str(blocker / "decoded"))
    f = tmp_path / "z.gz"
    a = np.ones((3, 2, 2), dtype=np.uint8)
    write_idx(f, a)
    assert np.array_equal(disk_cache.idx_array(f, read_idx), a)


def test_jpegs_decoded_by_one_process_are_read_back_by_the_next(tiny_flowers, monkeypatch):
    data = build_dataset("flower102", "train", root=str(tiny_flowers))
    idx = np.array([4, 0, 2, 7])
    calls = []
    monkeypatch.setattr(cache, "decode", _counting(decode, calls))
    first = cached_images(data, idx, 16, 3)
    cache.clear()  # a new process: nothing in memory
    again = cached_images(data, idx, 16, 3)
    assert len(calls) == 1
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert torch.equal(again.images, decode(data, idx, 16, 3).images)  # what decoding gives
    cache.clear()
    cached_images(data, idx, 20, 3)  # another side is another set
    assert len(calls) == 2


def test_a_changed_jpeg_is_decoded_again(tiny_flowers, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "flowers"
    shutil.copytree(tiny_flowers, root)
    data = build_dataset("flower102", "train", root=str(root))
    idx = np.array([1, 3])
    before = cached_images(data, idx, 16, 3).images.clone()
    victim = data.paths[3]
    shutil.copy(data.paths[5], victim)  # image 3 is now image 5's picture
    os.utime(victim, ns=(2, 2))
    cache.clear()
    calls = []
    monkeypatch.setattr(cache, "decode", _counting(decode, calls))
    after = cached_images(data, idx, 16, 3).images
    assert len(calls) == 1
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])


def test_in_memory_arrays_are_sliced_not_stored(tiny_fashion, tmp_path):
    data = build_dataset("fashion_mnist", "train", root=str(tiny_fashion))
    cached_images(data, np.arange(10), 28, 1)
    assert not (tmp_path / "decoded" / "sets").exists()
