"""Per-client data of the multi-task setting (paper 003): every client holds its own dataset.

``data.clients: [fashion_mnist, mnist]`` gives client 0 Fashion-MNIST and client 1 MNIST. Each
client's training split is (optionally capped at ``max_per_client`` images, stratified, then)
split stratified into a **labeled** part (``labeled_fraction``, 25% in the paper) and an
**unlabeled** rest (75%): stage one trains SimCLR on the unlabeled part and uses the labeled part
as the kNN monitor's bank; stage two trains the task head on the labeled part. The dataset's own
test split is the client's test set. Everything is deterministic for ``data.seed``, so server
and clients compute the same split without exchanging indices, and a client only ever loads its
own dataset. A dataset listed for several clients (``[fashion_mnist, fashion_mnist]``) is split
IID into disjoint shards, one per such client (the IID case of the benchmarks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from fedssl.config import ConfigError, DataConfig
from fedssl.data.datasets import DATASETS, Dataset, build_dataset
from fedssl.data.partition import iid, labeled_unlabeled

__all__ = [
    "ClientTask",
    "client_task",
    "task_in_chans",
    "subsample",
    "ImageDataset",
    "IN_CHANS",
]

#: Channels of each dataset's images (known without loading the data).
IN_CHANS = {"fashion_mnist": 1, "mnist": 1, "flower102": 3, "intel_scene": 3}


@dataclass(frozen=True)
class ClientTask:
    """One client's dataset and its labeled / unlabeled / test indices."""

    name: str
    train: Dataset
    test: Dataset
    labeled: np.ndarray  # indices into ``train``
    unlabeled: np.ndarray  # indices into ``train``

    @property
    def num_classes(self) -> int:
        """Classes of this client's task."""
        return self.train.num_classes

    def histogram(self, part: str) -> list[int]:
        """Examples per class in ``labeled``, ``unlabeled`` or ``test``."""
        if part == "test":
            labels = self.test.labels
        else:
            labels = self.train.labels[getattr(self, part)]
        return np.bincount(labels, minlength=self.num_classes).tolist()


def subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices stratified by label (all indices when ``n`` is 0 or >= len)."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    return labeled_unlabeled(labels, fraction=n / len(labels), seed=seed)[0]


def _check(cfg: DataConfig, partition_id: int) -> str:
    if not cfg.clients:
        raise ConfigError("data.clients is empty: list one dataset per client, e.g. [mnist, ...]")
    if not 0 <= partition_id < len(cfg.clients):
        raise ValueError(f"partition-id {partition_id} is outside [0, {len(cfg.clients)})")
    name = cfg.clients[partition_id]
    if name not in DATASETS:
        raise ConfigError(
            f"data.clients[{partition_id}]: unknown dataset {name!r}; "
            f"available: {', '.join(DATASETS)}"
        )
    if not 0.0 < cfg.labeled_fraction < 1.0:
        raise ConfigError(f"data.labeled_fraction must be in (0, 1), got {cfg.labeled_fraction}")
    return name


@lru_cache(maxsize=8)
def _cached(cfg_key: str, partition_id: int) -> ClientTask:
    cfg = DataConfig(**json.loads(cfg_key))
    name = _check(cfg, partition_id)
    root = cfg.roots.get(name) or cfg.root
    train = build_dataset(name, "train", root=root)
    test = build_dataset(name, "test", root=root)
    seed = cfg.seed * 1000 + partition_id
    # A dataset listed k times is split IID into k disjoint shards, one per such client.
    holders = [i for i, n in enumerate(cfg.clients) if n == name]
    pool = np.arange(len(train))
    if len(holders) > 1:
        pool = np.sort(iid(train.labels, len(holders), seed=cfg.seed)[holders.index(partition_id)])
    keep = pool[subsample(train.labels[pool], cfg.max_per_client, seed)]
    lab, unl = labeled_unlabeled(train.labels[keep], cfg.labeled_fraction, seed=seed + 1)
    return ClientTask(name, train, test, np.sort(keep[lab]), np.sort(keep[unl]))


def client_task(cfg: DataConfig, partition_id: int) -> ClientTask:
    """Client ``partition_id``'s dataset and split (cached per process).

    Raises:
        ConfigError: no or unknown ``data.clients`` entry, bad ``labeled_fraction``.
        ValueError: ``partition_id`` out of range.
        DatasetNotFoundError: the client's data is missing (the message says how to get it).
    """
    _check(cfg, partition_id)
    return _cached(json.dumps(vars(cfg), sort_keys=True), partition_id)


def task_in_chans(cfg: DataConfig) -> int:
    """Input channels for a backbone shared by all clients: the most any client's data has."""
    for name in cfg.clients:
        if name not in IN_CHANS:
            raise ConfigError(f"data.clients: unknown dataset {name!r}")
    return max(IN_CHANS[n] for n in cfg.clients) if cfg.clients else 1


class ImageDataset(TorchDataset):
    """``(transform(image), label)`` for the given indices of a fedssl dataset.

    Images are converted to ``mode`` (``L`` or ``RGB``) first, so grayscale clients can share an
    RGB backbone.
    """

    def __init__(self, data: Dataset, indices: np.ndarray, transform, mode: str = "L"):
        self.data, self.indices = data, np.asarray(indices)
        self.transform, self.mode = transform, mode

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        img = self.data.pil(j)
        if img.mode != self.mode:
            img = img.convert(self.mode)
        return self.transform(img), torch.tensor(int(self.data.labels[j]))
