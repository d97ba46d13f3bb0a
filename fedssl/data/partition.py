"""Client partitioners: pure, deterministic for a seed, disjoint.

Every partitioner takes the label array first and returns one ``np.ndarray`` of indices (into
that label array) per client. The semantics follow ``flwr-datasets``:

================  ==========================================  ===============================
function          meaning                                      flwr-datasets counterpart
================  ==========================================  ===============================
iid               uniform random split, sizes differ by <= 1   ``IidPartitioner``
label_split       disjoint contiguous label groups per client  ``PathologicalPartitioner``
                  (0-4 / 5-9 for two clients: H-environment)   (``first-class`` ordering)
dominant_label    client i: fraction p of label i mod C, the   ``DistributionPartitioner``
                  rest spread evenly over the other labels
dirichlet         per label, shares drawn from Dir(alpha)      ``DirichletPartitioner``
labeled_unlabeled stratified 2-way split [labeled, unlabeled]  --
================  ==========================================  ===============================

All but ``dominant_label`` are complete (every index is assigned). ``dominant_label`` keeps the
exact label fractions instead, so it leaves out what no client can take (at most the per-client
rounding and any label surplus); :func:`fedssl.data.manifest.partition_manifest` records it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["iid", "label_split", "dominant_label", "dirichlet", "labeled_unlabeled", "PARTITIONERS"]


def _labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("labels is empty")
    return arr


def _check_clients(num_clients: int, n: int) -> None:
    if not isinstance(num_clients, int | np.integer) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if num_clients > n:
        raise ValueError(f"num_clients={num_clients} is larger than the {n} examples")


def iid(labels, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle and split into ``num_clients`` parts whose sizes differ by at most one.

    Args:
        labels: 1-D label array (only its length is used).
        num_clients: number of clients.
        seed: random seed.
    """
    y = _labels(labels)
    _check_clients(num_clients, y.size)
    perm = np.random.default_rng(seed).permutation(y.size)
    return [np.sort(p) for p in np.array_split(perm, num_clients)]


def label_split(
    labels, num_clients: int, seed: int = 0, groups: Sequence[Sequence[int]] | None = None
) -> list[np.ndarray]:
    """Give each client every example of its own, disjoint group of labels.

    Args:
        labels: 1-D label array.
        num_clients: number of clients.
        seed: random seed (the order within each client's array is shuffled).
        groups: explicit label groups, one per client; default: the sorted labels cut into
            ``num_clients`` contiguous groups (``[0..4], [5..9]`` for ten labels, two clients).
    """
    y = _labels(labels)
    _check_clients(num_clients, y.size)
    classes = np.unique(y)
    if groups is None:
        if num_clients > classes.size:
            raise ValueError(f"label_split: {num_clients} clients but only {classes.size} labels")
        groups = [list(g) for g in np.array_split(classes, num_clients)]
    if len(groups) != num_clients:
        raise ValueError(f"label_split: {len(groups)} groups for {num_clients} clients")
    seen: set = set()
    for g in groups:
        if seen & set(g):
            raise ValueError(f"label_split: label groups overlap ({sorted(seen & set(g))})")
        seen |= set(g)
    missing = set(classes.tolist()) - seen
    if missing:
        raise ValueError(f"label_split: labels {sorted(missing)} belong to no group")
    rng = np.random.default_rng(seed)
    return [np.sort(rng.permutation(np.flatnonzero(np.isin(y, list(g))))) for g in groups]


def dominant_label(
    labels, num_clients: int, p: float = 0.55, seed: int = 0, size: int | None = None
) -> list[np.ndarray]:
    """Paper 004's skew: client ``i`` holds fraction ``p`` of label ``classes[i % C]``.

    The remaining ``1 - p`` is spread evenly over the other ``C - 1`` labels. ``p = 1/C`` is IID;
    ``p = 1`` gives one label per client. Clients have equal size: ``size`` if given, else the
    largest size every label can supply (at most ``len(labels) // num_clients``).

    Args:
        labels: 1-D label array.
        num_clients: number of clients.
        p: fraction of each client's data taken from its dominant label, in ``[0, 1]``.
        seed: random seed.
        size: examples per client; a ``ValueError`` if the labels cannot supply it.
    """
    y = _labels(labels)
    _check_clients(num_clients, y.size)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dominant_label: p must be in [0, 1], got {p}")
    classes, counts = np.unique(y, return_counts=True)
    c = classes.size
    if c < 2:
        raise ValueError("dominant_label needs at least two labels")
    share = np.full((num_clients, c), (1.0 - p) / (c - 1))
    share[np.arange(num_clients), np.arange(num_clients) % c] = p
    demand_per_example = share.sum(axis=0)  # examples of each label per unit of client size
    supply = np.where(
        demand_per_example > 0, counts / np.maximum(demand_per_example, 1e-12), np.inf
    )
    limit = int(np.min(supply) + 1e-9)
    limit = min(limit, y.size // num_clients)
    if size is None:
        size = limit
    elif size > limit:
        raise ValueError(
            f"dominant_label: size={size} per client exceeds what labels supply ({limit})"
        )
    quota = np.floor(share * size + 1e-9).astype(int)
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(y == k))) for k in classes]
    parts = []
    for i in range(num_clients):
        take = []
        for k in range(c):
            q = quota[i, k]
            take.extend(pools[k][:q])
            pools[k] = pools[k][q:]
        parts.append(np.sort(np.asarray(take, dtype=np.int64)))
    return parts


def dirichlet(
    labels,
    num_clients: int,
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Per label, split its examples over clients in shares drawn from ``Dir(alpha)``.

    Small ``alpha`` is strongly skewed, large ``alpha`` approaches IID. Draws are repeated (up to
    ``max_tries``) until every client has at least ``min_size`` examples, as flwr-datasets does.

    Args:
        labels: 1-D label array.
        num_clients: number of clients.
        alpha: concentration, > 0.
        seed: random seed.
        min_size: smallest acceptable client size.
        max_tries: redraws before giving up with a ``ValueError``.
    """
    y = _labels(labels)
    _check_clients(num_clients, y.size)
    if not alpha > 0:
        raise ValueError(f"dirichlet: alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for k in classes:
            idx = rng.permutation(np.flatnonzero(y == k))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * idx.size).astype(int)[:-1]
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ValueError(
        f"dirichlet: no draw in {max_tries} tries gave every client >= {min_size} examples; "
        "raise alpha or lower min_size"
    )


def labeled_unlabeled(labels, fraction: float = 0.25, seed: int = 0) -> list[np.ndarray]:
    """Stratified split into ``[labeled, unlabeled]``; ``fraction`` of every label is labeled.

    Args:
        labels: 1-D label array.
        fraction: labeled share per label, in ``(0, 1)``; rounded per label, at least one
            labeled example of each label.
        seed: random seed.
    """
    y = _labels(labels)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"labeled_unlabeled: fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    lab, unl = [], []
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        m = max(1, int(round(fraction * idx.size))) if idx.size > 1 else idx.size
        lab.append(idx[:m])
        unl.append(idx[m:])
    return [np.sort(np.concatenate(lab)), np.sort(np.concatenate(unl))]


PARTITIONERS = {
    "iid": iid,
    "label_split": label_split,
    "dominant_label": dominant_label,
    "dirichlet": dirichlet,
}
