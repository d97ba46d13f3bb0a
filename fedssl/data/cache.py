"""A client's images decoded once per process and kept as ``uint8`` tensors (``data.cache``).

Loading an image through PIL and a torchvision transform costs more than a training step of a
small backbone on it, and stage one reads the same few thousand images every round. So each
set a client uses (its unlabeled images, the kNN bank and queries, the BatchNorm images) is
decoded **once per process** into one ``(N, C, S, S)`` ``uint8`` tensor — resized on the shorter
side and centre-cropped to the model's input side ``S``, as the evaluation transform does and as
batched views take them — and kept where training reads it:

* ``device``: on the training device (a GPU: views and features are made there, nothing
  crosses the bus per batch);
* ``host``: in host memory (pinned when a GPU is visible, for asynchronous copies);
* ``auto`` (the default): ``device`` when the tensor fits ``data.cache_gpu_share`` of the GPU's
  free memory, else ``host``; on a CPU-only runtime the two are the same memory;
* ``off``: no cache; every batch goes through PIL and the loader as before.

Shuffling and batching then happen on index tensors (:func:`batches`): no per-image Python in
the training loop. The cache lives as long as the process — a Ray actor of the simulation
engine, or a long-lived ClientApp — and is keyed by the dataset, the indices and the side, so
a changed config never reads stale images. Images decoded from files (JPEGs) are also kept on
disk for the next process (:mod:`fedssl.data.disk_cache`, keyed by the files' sizes and times).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedssl.config import ConfigError
from fedssl.data import disk_cache

__all__ = [
    "CACHE_MODES",
    "ImageTensors",
    "decode",
    "placement",
    "cached_images",
    "clear",
    "Batches",
]

#: the values of ``data.cache``
CACHE_MODES = ("auto", "device", "host", "off")
_MAX_ENTRIES = 16  # sets kept per process (a client uses four or five)


@dataclass(frozen=True)
class ImageTensors:
    """Images ``(N, C, S, S)`` ``uint8`` and their labels ``(N,)`` ``int64``, on one device.

    ``where`` says which placement was chosen (``device`` or ``host``) and why, for the run's
    runtime line."""

    images: torch.Tensor
    labels: torch.Tensor
    where: str = "host"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes the images take."""
        return self.images.numel() * self.images.element_size()

    def floats(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Images (all, or ``idx``) as floats in [0, 1], as ``ToTensor`` gives them."""
        x = self.images if idx is None else self.images[idx]
        return x.float().div_(255.0)


def _pil_to_uint8(img, side: int, mode: str) -> np.ndarray:
    import torchvision.transforms.functional as TF

    if img.mode != mode:
        img = img.convert(mode)
    img = TF.center_crop(TF.resize(img, side), side)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode(data, indices: np.ndarray, side: int, chans: int) -> ImageTensors:
    """Images ``indices`` of a fedssl dataset as ``(N, chans, side, side)`` ``uint8`` on the
    CPU: resized (shorter side) and centre-cropped to ``side``, converted to ``chans``
    channels — what :func:`fedssl.data.transforms.eval_transform` gives before its scaling.
    In-memory arrays already at ``side`` are sliced without PIL.

    Raises:
        ValueError: ``chans`` is not 1 or 3, ``side`` is not positive, or an image cannot be
            read (the message names it).
    """
    if chans not in (1, 3):
        raise ValueError(f"decode: images have 1 or 3 channels, not {chans}")
    if side <= 0:
        raise ValueError(f"decode: the image side must be positive, got {side}")
    idx = np.asarray(indices, dtype=np.int64)
    labels = torch.as_tensor(np.asarray(data.labels)[idx], dtype=torch.int64)
    arr = getattr(data, "images", None)
    if isinstance(arr, np.ndarray) and arr.shape[1] == side and arr.shape[2] == side:
        x = torch.from_numpy(np.ascontiguousarray(arr[idx]))
        x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
        if x.shape[1] == 1 and chans == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and chans == 1:  # PIL's L: ITU-R 601-2 luma, rounded
            w = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
            x = ((x.to(torch.int32) * w).sum(1, keepdim=True) + 500).div(
                1000, rounding_mode="floor"
            )
        return ImageTensors(x.to(torch.uint8).contiguous(), labels)
    mode = "RGB" if chans == 3 else "L"
    out = np.empty((len(idx), chans, side, side), dtype=np.uint8)
    for n, j in enumerate(idx):
        out[n] = _pil_to_uint8(data.pil(int(j)), side, mode)
    return ImageTensors(torch.from_numpy(out), labels)


def placement(mode: str, nbytes: int, device: torch.device, share: float) -> tuple[str, str]:
    """Where a cache of ``nbytes`` goes: ``("device" | "host", reason)``.

    ``auto`` picks the training device when it is a GPU and the images take at most ``share``
    of its free memory, else host memory.

    Raises:
        ConfigError: an unknown mode, a share outside (0, 1], or ``device`` for a GPU whose free
            memory cannot hold the images.
    """
    if mode not in CACHE_MODES:
        raise ConfigError(f"data.cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"data.cache_gpu_share must be in (0, 1], got {share}")
    mib = nbytes / 2**20
    if device.type != "cuda":
        return "host", f"{mib:.1f} MiB in host memory (the training device is the CPU)"
    free, _ = torch.cuda.mem_get_info(device)
    fits = nbytes <= share * free
    if mode == "device" and nbytes > free:
        raise ConfigError(
            f"data.cache=device: the images take {mib:.0f} MiB, more than the GPU's free "
            f"{free / 2**20:.0f} MiB; use data.cache=auto or host"
        )
    if mode == "host" or (mode == "auto" and not fits):
        why = (
            "data.cache=host"
            if mode == "host"
            else (
                f"more than data.cache_gpu_share={share:g} of the GPU's free {free / 2**30:.1f} GiB"
            )
        )
        return "host", f"{mib:.1f} MiB in pinned host memory ({why})"
    return "device", f"{mib:.1f} MiB on {device} ({'auto: fits' if mode == 'auto' else 'device'})"


_CACHE: OrderedDict[tuple, ImageTensors] = OrderedDict()


def _key(data, indices: np.ndarray, side: int, chans: int, device: torch.device, mode: str):
    idx = np.asarray(indices, dtype=np.int64)
    h = hashlib.sha1(idx.tobytes())
    h.update(
        np.asarray(data.labels)[idx].astype(np.int64).tobytes()
    )  # the split, not only its size
    ident = (type(data).__name__, getattr(data, "name", ""), getattr(data, "source", ""),
             len(data))  # fmt: skip
    digest = h.hexdigest()
    return (*ident, digest, int(side), int(chans), str(device), mode)


def cached_images(
    data,
    indices: np.ndarray,
    side: int,
    chans: int,
    *,
    device: torch.device | str = "cpu",
    mode: str = "auto",
    share: float = 0.5,
) -> ImageTensors:
    """:func:`decode` once per process, placed by :func:`placement`; later calls with the same
    dataset, indices, side, channels and device return the same tensors (no copy, no decode).

    Raises:
        ConfigError: from :func:`placement`, or ``mode`` ``off`` (the caller loads per image).
        ValueError: from :func:`decode`.
    """
    if mode == "off":
        raise ConfigError("data.cache=off: images are loaded per batch, not cached")
    device = torch.device(device)
    key = _key(data, indices, side, chans, device, mode)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    t = _decode_through_disk(data, indices, side, chans)
    where, why = placement(mode, t.nbytes, device, share)
    if where == "device":
        t = ImageTensors(t.images.to(device), t.labels.to(device), f"device: {why}")
    elif device.type == "cuda":
        t = ImageTensors(t.images.pin_memory(), t.labels.pin_memory(), f"host: {why}")
    else:
        t = ImageTensors(t.images, t.labels, f"host: {why}")
    _CACHE[key] = t
    while len(_CACHE) > _MAX_ENTRIES:
        _CACHE.popitem(last=False)
    return t


def _decode_through_disk(data, indices: np.ndarray, side: int, chans: int) -> ImageTensors:
    """:func:`decode`, through :mod:`fedssl.data.disk_cache` for images decoded from files (an
    earlier process's decoded set of the same files, indices, side and channels is read back
    instead); in-memory arrays are sliced, which is faster than reading them from disk."""
    paths = getattr(data, "paths", None)
    if paths is None:
        return decode(data, indices, side, chans)
    idx = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(data.labels)[idx].astype(np.int64)
    chosen = [paths[int(j)] for j in idx]
    key = (
        f"{getattr(data, 'name', '')}\0{disk_cache.file_identity(chosen)}\0"
        f"{hashlib.sha1(labels.tobytes()).hexdigest()}\0{int(side)}\0{int(chans)}"
    )
    hit = disk_cache.load(key, len(idx))
    if hit is not None and np.array_equal(hit[1], labels):
        return ImageTensors(torch.from_numpy(hit[0]), torch.from_numpy(labels))
    t = decode(data, indices, side, chans)
    disk_cache.store(key, t.images.numpy(), labels)
    return t


def clear() -> None:
    """Forget every cached set of this process."""
    _CACHE.clear()


class Batches:
    """Batches of a cache's images, drawn on index tensors: ``(images, group)`` per batch, the
    images ``uint8`` where the cache keeps them, ``group`` a ``(B,)`` tensor of ``group``.

    Args:
        images: the cached set.
        batch_size: images per batch.
        shuffle: a fresh permutation each pass, from a generator seeded by ``seed``.
        drop_last: leave out the last partial batch.
        seed: the permutation's seed (the same seed gives the same batches).
        group: the value of every batch's second element (the client index batched views use).
        labels: yield the labels instead of ``group`` (evaluation batches).
    """

    def __init__(
        self,
        images: ImageTensors,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        group: int = 0,
        labels: bool = False,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.images, self.batch_size = images, int(batch_size)
        self.shuffle, self.drop_last, self.group, self.labels = shuffle, drop_last, group, labels
        self.generator = torch.Generator().manual_seed(int(seed) % 2**63)

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, dev = len(self.images), self.images.images.device
        g = self.generator
        if self.shuffle:  # the draws of DataLoader(shuffle=True, generator=g): the same batches
            torch.empty((), dtype=torch.int64).random_(generator=g)  # its base seed
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        order = order.to(dev)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images.images[idx]
            if self.labels:
                yield x, self.images.labels[idx]
            else:
                yield x, torch.full((len(idx),), self.group, dtype=torch.int64, device=dev)
        if self.shuffle:  # RandomSampler's (empty) remainder permutation at the end of a pass
            torch.randperm(n, generator=g)
