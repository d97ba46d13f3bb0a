"""The image cache (``data.cache``): the same images, labels and order as the per-image path,
placement by size, and one decode per process."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fedssl.config import ConfigError
from fedssl.data import cache
from fedssl.data.cache import Batches, ImageTensors, cached_images, decode, placement
from fedssl.data.client_images import ImageDataset
from fedssl.data.datasets import build_dataset
from fedssl.data.transforms import eval_transform, pil_mode


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


def _per_image(data, idx, side, chans):
    """What the loader path gives: the evaluation transform, per image through PIL."""
    ds = ImageDataset(data, idx, eval_transform(side, chans), pil_mode(chans))
    x, y = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(x), torch.stack(y)


def _normalised(t: ImageTensors, chans):
    from fedssl.data.transforms import normalize

    n = normalize(chans)
    mean, std = torch.tensor(n["mean"]).view(1, -1, 1, 1), torch.tensor(n["std"]).view(1, -1, 1, 1)
    return (t.floats() - mean) / std


@pytest.mark.parametrize("chans", [1, 3])
def test_28px_arrays_are_sliced_to_the_same_images_labels_and_order(tiny_fashion, chans):
    data = build_dataset("fashion_mnist", "train", root=str(tiny_fashion))
    idx = np.array([17, 3, 599, 3, 250])  # any order, repeats kept
    t = decode(data, idx, 28, chans)
    assert t.images.dtype == torch.uint8 and t.images.shape == (5, chans, 28, 28)
    x, y = _per_image(data, idx, 28, chans)
    assert torch.equal(t.labels, y)
    assert torch.allclose(_normalised(t, chans), x, atol=1e-5)
    assert torch.equal(t.images[1], t.images[3])


@pytest.mark.parametrize("side", [16, 24])
def test_jpegs_are_decoded_resized_and_cropped_as_the_evaluation_transform(tiny_flowers, side):
    data = build_dataset("flower102", "train", root=str(tiny_flowers))
    idx = np.array([4, 0, 2])
    t = decode(data, idx, side, 3)
    assert t.images.shape == (3, 3, side, side)
    x, y = _per_image(data, idx, side, 3)
    assert torch.equal(t.labels, y)
    assert torch.allclose(_normalised(t, 3), x, atol=1e-5)


def test_rgb_arrays_become_grayscale_as_pil_converts_them():
    from PIL import Image

    from fedssl.data.datasets import ArrayDataset

    rgb = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    data = ArrayDataset("rgb", rgb, np.arange(4), ("a", "b", "c", "d"))
    got = decode(data, np.arange(4), 8, 1).images[:, 0].numpy()
    want = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in rgb])
    assert np.array_equal(got, want)


def test_a_set_is_decoded_once_per_process(tiny_fashion, monkeypatch):
    data = build_dataset("fashion_mnist", "train", root=str(tiny_fashion))
    calls = []
    real = cache.decode
    monkeypatch.setattr(cache, "decode", lambda *a: calls.append(a) or real(*a))
    a = cached_images(data, np.arange(10), 28, 1)
    b = cached_images(data, np.arange(10), 28, 1)
    assert a is b and len(calls) == 1
    c = cached_images(data, np.arange(1, 11), 28, 1)  # other indices: another set
    test = build_dataset("fashion_mnist", "test", root=str(tiny_fashion))
    d = cached_images(test, np.arange(10), 28, 1)  # another split
    assert len(calls) == 3 and not torch.equal(c.images, a.images)
    assert not torch.equal(d.images, a.images)
    assert a.where.startswith("host") and "CPU" in a.where


class _FakeCuda:
    def __init__(self, free):
        self.free = free

    def __call__(self, device=None):
        return self.free, 2 * self.free


def test_auto_keeps_the_images_on_the_gpu_only_within_its_share(monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", _FakeCuda(free=1000 * 2**20))
    where, why = placement("auto", 400 * 2**20, gpu, 0.5)
    assert where == "device" and "auto" in why
    where, why = placement("auto", 600 * 2**20, gpu, 0.5)  # over half the free memory
    assert where == "host" and "data.cache_gpu_share=0.5" in why
    assert placement("auto", 600 * 2**20, gpu, 0.7)[0] == "device"
    assert placement("host", 1, gpu, 0.5)[0] == "host"
    assert placement("device", 900 * 2**20, gpu, 0.5)[0] == "device"  # asked for: up to all
    with pytest.raises(ConfigError, match="more than the GPU's free 1000 MiB"):
        placement("device", 1200 * 2**20, gpu, 0.5)
    with pytest.raises(ConfigError, match="data.cache must be one of"):
        placement("gpu", 1, gpu, 0.5)
    with pytest.raises(ConfigError, match="cache_gpu_share must be in"):
        placement("auto", 1, gpu, 0.0)


@pytest.mark.parametrize("n,b,drop", [(10, 3, True), (10, 5, True), (11, 4, False)])
def test_batches_are_those_of_a_dataloader_with_the_same_seed(n, b, drop):
    """Shuffled batches on index tensors draw what ``DataLoader(shuffle=True)`` draws with
    the same seed, pass after pass: the cache and loader paths train on the same batches."""
    ids = torch.arange(n)
    loader = DataLoader(ids, batch_size=b, shuffle=True, drop_last=drop,
                        generator=torch.Generator().manual_seed(7))  # fmt: skip
    want = [x.tolist() for _ in range(3) for x in loader]
    images = ImageTensors(ids.view(n, 1, 1, 1).to(torch.uint8), ids)
    batches = Batches(images, b, shuffle=True, drop_last=drop, seed=7, labels=True)
    got = [y.tolist() for _ in range(3) for _, y in batches]
    assert got == want and len(batches) == len(loader)
    x, g = next(iter(Batches(images, b, group=4)))
    assert x.dtype == torch.uint8 and g.tolist() == [4] * b
    with pytest.raises(ValueError, match="batch size must be positive"):
        Batches(images, 0)
