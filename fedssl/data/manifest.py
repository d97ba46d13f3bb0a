"""Partition manifests: which indices each client holds, and its label histogram."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["label_histogram", "partition_manifest", "write_manifest"]


def label_histogram(labels: np.ndarray, idx: np.ndarray, num_classes: int) -> list[int]:
    """Count of each label among ``labels[idx]``."""
    return np.bincount(np.asarray(labels)[idx], minlength=num_classes).astype(int).tolist()


def partition_manifest(
    labels: np.ndarray,
    parts: Sequence[Mapping[str, np.ndarray]],
    num_classes: int,
    meta: Mapping | None = None,
) -> dict:
    """A JSON-ready manifest: per client and per part, the indices and the label histogram.

    Args:
        labels: labels of the whole dataset.
        parts: per client, a mapping part name (``train``, ``val``, ...) -> index array.
        num_classes: histogram length.
        meta: extra fields (dataset, partitioner, seed...).
    """
    all_idx = (
        np.concatenate([np.asarray(v) for p in parts for k, v in p.items() if k != "val"])
        if parts
        else np.array([], dtype=int)
    )
    clients = []
    for i, p in enumerate(parts):
        entry = {"client": i}
        for name, idx in p.items():
            idx = np.asarray(idx)
            entry[name] = {
                "size": int(idx.size),
                "label_histogram": label_histogram(labels, idx, num_classes),
                "indices": idx.astype(int).tolist(),
            }
        clients.append(entry)
    return {
        **dict(meta or {}),
        "dataset_size": int(len(labels)),
        "assigned": int(np.unique(all_idx).size),
        "clients": clients,
    }


def write_manifest(path: str | Path, manifest: dict) -> Path:
    """Write a manifest as JSON; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(manifest))
    return p
