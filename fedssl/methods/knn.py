"""Representation quality monitors: backbone features and weighted kNN accuracy.

kNN follows the protocol lightly and solo-learn report for self-supervised backbones (Wu et al.
2018): L2-normalised features, the ``k`` most cosine-similar labeled examples vote with weight
``exp(sim / t)`` (k = 200, t = 0.1 by default), computed with lightly's ``knn_predict``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from torch import nn
from torch.utils.data import DataLoader

from fedssl.runtime import Runtime, predict

__all__ = ["extract_features", "knn_accuracy"]


def extract_features(
    backbone: nn.Module, loader: DataLoader, rt: Runtime | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised float32 CPU features ``(N, D)`` and labels ``(N,)`` of every batch (eval
    mode), computed on ``rt``'s device and precision (default: where the backbone is)."""
    feats, labels = predict(backbone, loader, rt, fn=lambda m, x: m(x).flatten(1))
    return F.normalize(feats, dim=1), labels


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    batch_size: int = 1024,
) -> float:
    """Top-1 accuracy of weighted kNN: ``queries`` classified by their neighbours in ``bank``.

    Args:
        bank, queries: L2-normalised features ``(N, D)`` / ``(M, D)``.
        bank_labels, query_labels: int labels.
        num_classes: classes of the task.
        k: neighbours (capped at the bank size).
        t: temperature of the similarity weights.

    Raises:
        ValueError: an empty bank or query set, or mismatched feature widths.
    """
    if len(bank) == 0 or len(queries) == 0:
        raise ValueError("knn_accuracy: the bank and the queries must not be empty")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"knn_accuracy: bank features are {bank.shape[1]} wide, queries {queries.shape[1]}"
        )
    k = min(k, len(bank))
    bank_t = bank.t().contiguous()
    correct = 0
    for i in range(0, len(queries), batch_size):
        pred = knn_predict(queries[i : i + batch_size], bank_t, bank_labels, num_classes, k, t)
        correct += int((pred[:, 0] == query_labels[i : i + batch_size]).sum())
    return correct / len(queries)
