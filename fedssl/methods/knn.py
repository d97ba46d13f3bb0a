"""Representation quality monitors: backbone features and weighted kNN accuracy.

kNN follows the protocol lightly and solo-learn report for self-supervised backbones (Wu et al.
2018): L2-normalised features, the ``k`` most cosine-similar labeled examples vote with weight
``exp(sim / t)`` (k = 200, t = 0.1 by default), computed with lightly's ``knn_predict``.

A backbone merged from clients with different data carries BatchNorm statistics that are the
average of theirs and fit none of them; :func:`with_own_statistics` gives a client a copy whose
statistics are those of its own images (SiloBN's split, Andreux et al. 2020: learned weights
shared, statistics local), which is how a site would use the shared backbone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from torch import nn
from torch.utils.data import DataLoader

from fedssl.runtime import Runtime, predict

__all__ = [
    "class_accuracy",
    "extract_features",
    "knn_accuracy",
    "knn_predictions",
    "top1",
    "with_own_statistics",
]


def extract_features(
    backbone: nn.Module, loader: DataLoader, rt: Runtime | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised float32 CPU features ``(N, D)`` and labels ``(N,)`` of every batch (eval
    mode), computed on ``rt``'s device and precision (default: where the backbone is)."""
    feats, labels = predict(backbone, loader, rt, fn=lambda m, x: m(x).flatten(1))
    return F.normalize(feats, dim=1), labels


def with_own_statistics(
    backbone: nn.Module, batches: Iterable, rt: Runtime | None = None
) -> nn.Module:
    """A copy of ``backbone`` whose BatchNorm running statistics are re-estimated on
    ``batches`` (``(images, labels)``; labels unused): each layer's statistics become the
    average over the batches of their means and variances (``momentum=None``: every batch counts
    the same, nothing of the old statistics is left), the weights untouched. The backbone
    itself is not changed; one without BatchNorm comes back as an unchanged copy.

    Raises:
        ValueError: ``batches`` is empty while the backbone has BatchNorm layers.
    """
    net = copy.deepcopy(backbone)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return net
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative: every batch counts the same

    def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        for m in norms:  # predict() puts the net in eval mode; only BatchNorm must update
            m.train()
        return module(x).flatten(1)[:, :1]

    predict(net, batches, rt, fn=forward)  # raises ValueError on no batches
    return net


def knn_predictions(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Weighted-kNN class of every query ``(M,)``: ``queries`` classified by their neighbours in
    ``bank`` (lightly's ``knn_predict``, in batches of ``batch_size`` queries).

    Args:
        bank, queries: L2-normalised features ``(N, D)`` / ``(M, D)``.
        bank_labels: int labels of the bank.
        num_classes: classes of the task.
        k: neighbours (capped at the bank size).
        t: temperature of the similarity weights.

    Raises:
        ValueError: an empty bank or query set, or mismatched feature widths.
    """
    if len(bank) == 0 or len(queries) == 0:
        raise ValueError("knn: the bank and the queries must not be empty")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"knn: bank features are {bank.shape[1]} wide, queries {queries.shape[1]}")
    k = min(k, len(bank))
    bank_t = bank.t().contiguous()
    return torch.cat(
        [
            knn_predict(queries[i : i + batch_size], bank_t, bank_labels, num_classes, k, t)[:, 0]
            for i in range(0, len(queries), batch_size)
        ]
    )


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
    """Top-1 accuracy of weighted kNN (:func:`knn_predictions`; same arguments, plus the
    queries' labels)."""
    pred = knn_predictions(bank, bank_labels, queries, num_classes, k, t, batch_size)
    return top1(pred, query_labels)


def top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of predicted classes that are the labels (top-1 accuracy)."""
    return int((pred == labels).sum()) / len(labels)


def class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Accuracy on each class's queries (``nan`` for a class with none): where a
    representation wins or loses against another on the same queries."""
    return [
        float((pred[labels == c] == c).float().mean()) if bool((labels == c).any()) else math.nan
        for c in range(num_classes)
    ]
