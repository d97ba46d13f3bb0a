"""Per-client splits follow paper 001's protocol and never overlap."""

import numpy as np
import pytest

from fedssl.config import DataConfig
from fedssl.data.client_tensors import client_splits, client_tensors, server_test_tensors

LABELS = np.repeat(np.arange(10), 70)  # 700 examples


def test_v_environment_sizes_and_disjointness():
    cfg = DataConfig(partition="iid", train_per_client=300, test_per_client=50)
    splits = client_splits(LABELS, cfg)
    assert [(len(s.train), len(s.test)) for s in splits] == [(300, 50), (300, 50)]
    everything = np.concatenate([np.concatenate([s.train, s.test]) for s in splits])
    assert len(np.unique(everything)) == len(everything)
    assert all(np.array_equal(s.val, s.test) for s in splits)  # papers: local acc on local test


def test_h_environment_labels():
    cfg = DataConfig(partition="label_split", train_per_client=300, test_per_client=50)
    a, b = client_splits(LABELS, cfg)
    assert set(LABELS[np.concatenate([a.train, a.test])]) == {0, 1, 2, 3, 4}
    assert set(LABELS[np.concatenate([b.train, b.test])]) == {5, 6, 7, 8, 9}


def test_holdout_keeps_test_unseen():
    cfg = DataConfig(
        partition="iid",
        train_per_client=300,
        test_per_client=50,
        local_val="holdout",
        holdout_per_client=40,
    )
    for s in client_splits(LABELS, cfg):
        assert len(s.val) == 40 and len(s.train) == 260
        assert not set(s.val) & set(s.test) and not set(s.val) & set(s.train)


def test_small_shares_are_cut_proportionally():
    cfg = DataConfig(partition="iid", train_per_client=600, test_per_client=100)
    s = client_splits(LABELS, cfg)[0]
    assert len(s.train) + len(s.test) == 350 and len(s.test) == 50


def test_tensors_from_real_idx_files(tiny_fashion):
    cfg = DataConfig(root=str(tiny_fashion), train_per_client=300, test_per_client=50)
    data = client_tensors(cfg, 1)
    x, y = data["train"]
    assert x.shape == (300, 1, 28, 28) and x.dtype.is_floating_point and float(x.max()) <= 1.0
    tx, ty = server_test_tensors(cfg)
    assert len(ty) == 100
    with pytest.raises(ValueError, match="partition-id 2 is outside"):
        client_tensors(cfg, 2)
