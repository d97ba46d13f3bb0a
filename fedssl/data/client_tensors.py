"""Each client's data for the supervised experiments, built deterministically from the config.

Every process (server, each ClientApp) computes the same split from ``DataConfig`` and the seed,
so no indices travel. The protocol follows paper 001 (section IV.2):

1. the whole dataset (train + test, 70,000 for Fashion-MNIST) is partitioned over the clients
   (``iid`` = V-environment, ``label_split`` = H-environment, or any other partitioner);
2. each client shuffles its share and keeps ``test_per_client`` as its local test set and the
   next ``train_per_client`` for training (30,000 + 5,000 in the papers);
3. the server's test set is the union of the clients' local test sets (10,000).

With ``local_val = "holdout"`` a client's local accuracy is measured on ``holdout_per_client``
examples carved from its training share instead, so the test set stays unseen by clients.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from fedssl.config import ConfigError, DataConfig
from fedssl.data import partition as P
from fedssl.data.datasets import ArrayDataset, build_dataset

__all__ = [
    "ClientSplit",
    "client_splits",
    "check_splits",
    "to_tensors",
    "client_tensors",
    "server_test_tensors",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientSplit:
    """Indices (into the full dataset) of one client's train, local-validation and test parts."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _partition(labels: np.ndarray, cfg: DataConfig) -> list[np.ndarray]:
    options = {
        "dominant_label": {"p": cfg.dominant_p},
        "dirichlet": {"alpha": cfg.dirichlet_alpha},
    }.get(cfg.partition, {})
    return P.PARTITIONERS[cfg.partition](labels, cfg.num_clients, seed=cfg.seed, **options)


def client_splits(labels: np.ndarray, cfg: DataConfig) -> list[ClientSplit]:
    """Split every client's share into train / local-val / test index arrays.

    A share smaller than ``train_per_client + test_per_client`` is cut in the same proportion
    (with a warning), so skewed partitions still work.
    """
    rng = np.random.default_rng(cfg.seed + 1)
    out = []
    for i, share in enumerate(_partition(labels, cfg)):
        idx = rng.permutation(share)
        want = cfg.train_per_client + cfg.test_per_client
        n_test, n_train = cfg.test_per_client, cfg.train_per_client
        if len(idx) < want:
            n_test = int(round(len(idx) * cfg.test_per_client / want))
            n_train = len(idx) - n_test
            log.warning(
                "client %d holds %d examples (< %d): using %d train + %d test",
                i,
                len(idx),
                want,
                n_train,
                n_test,
            )
        test, train = idx[:n_test], idx[n_test : n_test + n_train]
        if cfg.local_val == "holdout":
            n_val = min(cfg.holdout_per_client, len(train) // 2)
            val, train = train[:n_val], train[n_val:]
        else:
            val = test
        out.append(ClientSplit(np.sort(train), np.sort(val), np.sort(test)))
    return out


def to_tensors(ds: ArrayDataset, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images in [0, 1] shaped ``(N, C, H, W)`` and int64 labels for the given indices."""
    x = torch.from_numpy(ds.images[idx]).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(ds.labels[idx])


@lru_cache(maxsize=4)
def _cached(cfg_key: str) -> tuple[ArrayDataset, list[ClientSplit]]:
    cfg = DataConfig(**json.loads(cfg_key))
    ds = build_dataset(cfg.name, "all", root=cfg.root)
    return ds, client_splits(ds.labels, cfg)


def _key(cfg: DataConfig) -> str:
    return json.dumps(vars(cfg), sort_keys=True)


def dataset_and_splits(cfg: DataConfig) -> tuple[ArrayDataset, list[ClientSplit]]:
    """The full dataset and every client's split (cached per process)."""
    return _cached(_key(cfg))


def check_splits(cfg: DataConfig) -> None:
    """Split the data as ``cfg`` says, before anything starts (a launcher's check).

    Raises:
        ConfigError: the clients cannot be split so (e.g. more clients than examples).
    """
    try:
        dataset_and_splits(cfg)
    except ValueError as err:
        raise ConfigError(f"data: the clients cannot be split as configured: {err}") from None


def client_tensors(
    cfg: DataConfig, partition_id: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (x, y), "val": (x, y)}`` for one client.

    Raises:
        ValueError: if ``partition_id`` is not in ``[0, num_clients)``.
    """
    if not 0 <= partition_id < cfg.num_clients:
        raise ValueError(f"partition-id {partition_id} is outside [0, {cfg.num_clients})")
    ds, splits = dataset_and_splits(cfg)
    s = splits[partition_id]
    return {"train": to_tensors(ds, s.train), "val": to_tensors(ds, s.val)}


def server_test_tensors(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's test set: the union of every client's local test share."""
    ds, splits = dataset_and_splits(cfg)
    return to_tensors(ds, np.sort(np.concatenate([s.test for s in splits])))
