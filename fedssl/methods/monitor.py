"""The images of the kNN monitor on one client, chosen once and read from the image cache.

A client scores a backbone by weighted kNN with its labeled part as the bank and its test split
as the queries, after re-estimating BatchNorm statistics on its own training images
(:mod:`fedssl.methods.knn`). Which images make up each set is decided here, from plain values
(:func:`monitor_indices`), for both ways of reading them: the cached ``uint8`` tensors of
:mod:`fedssl.data.cache` (:func:`monitor_images`, the default) and the per-image loaders of
:func:`fedssl.methods.pretrain.monitor_sets` (``data.cache: off``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedssl.data.cache import ImageTensors, cached_images
from fedssl.data.client_images import ClientTask, subsample
from fedssl.data.transforms import normalize

__all__ = ["monitor_indices", "MonitorImages", "monitor_images", "Normalized"]


def monitor_indices(
    task: ClientTask, pid: int, data_seed: int, bank: int, queries: int, bn_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bank, queries, statistics)`` indices of client ``pid``: at most ``bank`` labeled
    training images (stratified; 0: all), at most ``queries`` test images (stratified; 0: all),
    and at most ``bn_images`` of its training images (labeled and unlabeled, drawn without
    looking at labels; 0: all) for its BatchNorm statistics, sorted. The bank and statistics
    index ``task.train``, the queries ``task.test``."""
    seed = data_seed * 1000 + pid
    bank_idx = task.labeled[subsample(task.train.labels[task.labeled], bank, seed)]
    query_idx = subsample(task.test.labels, queries, seed)
    own = np.concatenate([task.unlabeled, task.labeled])
    rng = np.random.default_rng(seed)
    bn_idx = np.sort(rng.permutation(own)[:bn_images] if bn_images > 0 else own)
    return bank_idx, query_idx, bn_idx


@dataclass(frozen=True)
class MonitorImages:
    """A client's monitor sets as cached tensors (``uint8``, at the backbone's input side)."""

    bank: ImageTensors
    queries: ImageTensors
    statistics: ImageTensors
    num_classes: int
    in_chans: int


def monitor_images(
    task: ClientTask,
    indices: tuple[np.ndarray, np.ndarray, np.ndarray],
    side: int,
    chans: int,
    *,
    device: torch.device | str = "cpu",
    cache: str = "auto",
    share: float = 0.5,
) -> MonitorImages:
    """The sets of :func:`monitor_indices` from the process's image cache (decoded on first
    use; see :func:`fedssl.data.cache.cached_images` for ``device``, ``cache`` and ``share``)."""
    bank_idx, query_idx, bn_idx = indices

    def get(data, idx):
        return cached_images(data, idx, side, chans, device=device, mode=cache, share=share)

    return MonitorImages(
        get(task.train, bank_idx),
        get(task.test, query_idx),
        get(task.train, bn_idx),
        task.num_classes,
        chans,
    )


class Normalized:
    """``(images, labels)`` batches of cached images as the evaluation transform gives them:
    floats scaled to [0, 1] and normalised per channel (:func:`fedssl.data.transforms.normalize`),
    on the cache's device."""

    def __init__(self, images: ImageTensors, batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.images, self.batch_size = images, int(batch_size)
        norm, dev = normalize(int(images.images.shape[1])), images.images.device
        self.mean = torch.tensor(norm["mean"], device=dev).view(1, -1, 1, 1)
        self.std = torch.tensor(norm["std"], device=dev).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(len(self)):
            s = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield self.images.floats(s).sub_(self.mean).div_(self.std), self.images.labels[s]
