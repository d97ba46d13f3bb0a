"""Weighted kNN accuracy (the stage-one monitor)."""

import pytest
import torch
import torch.nn.functional as F

from fedssl.methods.knn import knn_accuracy


def _clusters(n_per: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(4, 16) * 5
    x = torch.cat([centers[k] + torch.randn(n_per, 16, generator=g) for k in range(4)])
    y = torch.arange(4).repeat_interleave(n_per)
    return F.normalize(x, dim=1), y


def test_knn_separates_clusters_and_is_chance_on_shuffled_labels():
    bank, by = _clusters(50, 0)
    q, qy = _clusters(25, 1)
    assert knn_accuracy(bank, by, q, qy, 4, k=20) == pytest.approx(1.0)
    shuffled = by[torch.randperm(len(by), generator=torch.Generator().manual_seed(2))]
    assert knn_accuracy(bank, shuffled, q, qy, 4, k=20) < 0.5
    # k larger than the bank is capped, batches give the same answer
    assert knn_accuracy(bank, by, q, qy, 4, k=10_000, batch_size=7) == knn_accuracy(
        bank, by, q, qy, 4, k=len(bank)
    )


def test_knn_errors():
    bank, by = _clusters(5, 0)
    with pytest.raises(ValueError, match="must not be empty"):
        knn_accuracy(bank[:0], by[:0], bank, by, 4)
    with pytest.raises(ValueError, match="16 wide, queries 8"):
        knn_accuracy(bank, by, bank[:, :8], by, 4)
