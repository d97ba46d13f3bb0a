"""Partitioners: deterministic, disjoint, complete, and the right label distributions."""

import numpy as np
import pytest

from fedssl.data import partition as P

LABELS = np.repeat(np.arange(10), 100)  # 1,000 examples, 100 per label
np.random.default_rng(0).shuffle(LABELS)


def assert_disjoint(parts, complete_n=None):
    allidx = np.concatenate(parts)
    assert len(allidx) == len(np.unique(allidx)), "indices assigned twice"
    if complete_n is not None:
        assert sorted(allidx.tolist()) == list(range(complete_n))


@pytest.mark.parametrize(
    "fn,kw",
    [
        (P.iid, {}),
        (P.label_split, {}),
        (P.dirichlet, {"alpha": 0.3}),
        (P.dominant_label, {"p": 0.55}),
    ],
)
def test_deterministic_and_disjoint(fn, kw):
    a = fn(LABELS, 5, seed=3, **kw)
    b = fn(LABELS, 5, seed=3, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert_disjoint(a, None if fn is P.dominant_label else len(LABELS))
    c = fn(LABELS, 5, seed=4, **kw)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True)) or fn is P.label_split


def test_iid_sizes_and_mix():
    parts = P.iid(LABELS, 3)
    assert sorted(len(p) for p in parts) == [333, 333, 334]
    for p in parts:
        assert len(np.unique(LABELS[p])) == 10


def test_label_split_two_clients_is_h_environment():
    a, b = P.label_split(LABELS, 2)
    assert set(LABELS[a]) == {0, 1, 2, 3, 4} and set(LABELS[b]) == {5, 6, 7, 8, 9}
    assert len(a) == len(b) == 500


def test_label_split_custom_groups_and_errors():
    a, b = P.label_split(LABELS, 2, groups=[[0, 9], [1, 2, 3, 4, 5, 6, 7, 8]])
    assert set(LABELS[a]) == {0, 9}
    with pytest.raises(ValueError, match="overlap"):
        P.label_split(LABELS, 2, groups=[[0, 1], [1, 2, 3, 4, 5, 6, 7, 8, 9]])
    with pytest.raises(ValueError, match="no group"):
        P.label_split(LABELS, 2, groups=[[0], [1]])
    with pytest.raises(ValueError, match="only 10 labels"):
        P.label_split(LABELS, 11)


def test_dominant_label_fractions_paper_004():
    parts = P.dominant_label(LABELS, 10, p=0.55)
    for i, p in enumerate(parts):
        hist = np.bincount(LABELS[p], minlength=10)
        assert len(p) == 100
        assert hist[i] == 55
        assert all(hist[k] == 5 for k in range(10) if k != i)


def test_dominant_label_extremes():
    one = P.dominant_label(LABELS, 10, p=1.0)
    assert all(len(np.unique(LABELS[p])) == 1 for p in one)
    flat = P.dominant_label(LABELS, 10, p=0.1)
    assert all((np.bincount(LABELS[p], minlength=10) == 10).all() for p in flat)
    with pytest.raises(ValueError, match="exceeds"):
        P.dominant_label(LABELS, 10, p=0.55, size=200)
    with pytest.raises(ValueError, match="p must be"):
        P.dominant_label(LABELS, 2, p=1.5)


def test_dirichlet_skew_depends_on_alpha():
    def spread(alpha):
        parts = P.dirichlet(LABELS, 5, alpha=alpha, seed=1)
        hists = np.array([np.bincount(LABELS[p], minlength=10) / max(len(p), 1) for p in parts])
        return hists.std(axis=0).mean()

    assert spread(0.05) > 2 * spread(100.0)
    with pytest.raises(ValueError, match="alpha"):
        P.dirichlet(LABELS, 5, alpha=0)


def test_labeled_unlabeled_stratified():
    lab, unl = P.labeled_unlabeled(LABELS, 0.25, seed=0)
    assert_disjoint([lab, unl], len(LABELS))
    assert (np.bincount(LABELS[lab], minlength=10) == 25).all()
    with pytest.raises(ValueError, match="fraction"):
        P.labeled_unlabeled(LABELS, 1.0)


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.array([])])
def test_bad_labels(bad):
    with pytest.raises(ValueError):
        P.iid(bad, 2)


def test_bad_client_counts():
    with pytest.raises(ValueError, match="positive integer"):
        P.iid(LABELS, 0)
    with pytest.raises(ValueError, match="larger than"):
        P.iid(LABELS[:3], 4)
