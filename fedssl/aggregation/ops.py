"""Per-tensor merge operations.

Each op takes the same-named tensor from every client (``tensors``, already checked to share
shape, dtype and device) and the clients' normalised weights (they sum to 1), and returns a new
tensor; inputs are never modified. Ops are pure tensor math: no I/O, no framework imports.

Floating tensors of half precision are accumulated in float32 and cast back, so that a merge of
many clients does not lose precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = [
    "Op",
    "avg",
    "maximum",
    "absmax",
    "absmax_magnitude",
    "median",
    "make_trimmed_mean",
    "integer_max",
]

Op = Callable[[Sequence[torch.Tensor], Sequence[float]], torch.Tensor]

_HALF = (torch.float16, torch.bfloat16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


def avg(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted element-wise mean ``sum_i w_i * t_i`` (FedAvg; papers' eq. 1/4 for equal weights).

    Computed as a running weighted mean with ``lerp``: ``m_1 = t_1``,
    ``m_k = m_{k-1} + (w_k / S_k) (t_k - m_{k-1})`` with ``S_k = w_1 + ... + w_k``. For two
    clients that is one fused kernel that reads both inputs once and writes the output once; for
    n clients the output is written n - 1 times (a multiply-then-add loop writes it n times).
    Clients with weight 0 are skipped.
    """
    first = tensors[0]
    acc = _acc_dtype(first.dtype)
    pairs = [(t, w) for t, w in zip(tensors, weights, strict=True) if w != 0.0]
    if not pairs:  # unreachable through merge (weights are validated); keep the op total
        return torch.zeros_like(first)

    def up(t: torch.Tensor) -> torch.Tensor:
        return t if t.dtype == acc else t.to(acc)

    out: torch.Tensor | None = None
    total = pairs[0][1]
    if len(pairs) == 1:
        out = up(pairs[0][0]).clone()
    for t, w in pairs[1:]:
        total += w
        frac = min(w / total, 1.0)
        if out is None:
            out = torch.lerp(up(pairs[0][0]), up(t), frac)
        else:
            out.lerp_(up(t), frac)
    assert out is not None
    return out if out.dtype == first.dtype else out.to(first.dtype)


def maximum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Element-wise maximum over clients (papers' eq. 2/5). Weights are not used."""
    out = tensors[0].clone()
    for t in tensors[1:]:
        torch.maximum(out, t, out=out)
    return out


def absmax(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Per element, the client value of largest magnitude, sign kept; ties go to the first client.

    Weights are not used.
    """
    out = tensors[0].clone()
    best = tensors[0].abs()
    for t in tensors[1:]:
        mag = t.abs()
        take = mag > best  # strict: on a tie the earlier client keeps the element
        out = torch.where(take, t, out)
        best = torch.where(take, mag, best)
    return out


def absmax_magnitude(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """The papers' eq. 3/6 taken literally: ``max(|w_1|, ..., |w_n|)`` (the sign is dropped)."""
    out = tensors[0].abs()
    for t in tensors[1:]:
        torch.maximum(out, t.abs(), out=out)
    return out


def _sorted_stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    first = tensors[0]
    stacked = torch.stack([t.to(_acc_dtype(first.dtype)) for t in tensors])
    return stacked.sort(dim=0).values


def median(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Element-wise median (mean of the two middle values for an even count, as ``np.median``).

    Weights are not used (Flower's FedMedian behaves the same).
    """
    n = len(tensors)
    s = _sorted_stack(tensors)
    mid = n // 2
    out = s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2
    return out.to(tensors[0].dtype)


def make_trimmed_mean(beta: float) -> Op:
    """Return the op that drops the ``floor(beta * n)`` smallest and largest values per element.

    Args:
        beta: fraction cut from each end, in ``[0, 0.5)``.

    Raises:
        ValueError: if ``beta`` is out of range.
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trimmed_mean beta must be in [0, 0.5), got {beta}")

    def trimmed_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        n = len(tensors)
        cut = int(beta * n)
        s = _sorted_stack(tensors)
        return s[cut : n - cut].mean(dim=0).to(tensors[0].dtype)

    trimmed_mean.__doc__ = f"Element-wise mean after trimming {beta:g} of clients at each end."
    return trimmed_mean


def integer_max(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Rule for integer and boolean tensors, whatever the method: element-wise maximum.

    For BatchNorm's ``num_batches_tracked`` this keeps the largest step count; averaging a counter
    would give a fractional step and max/absmax would be no different.
    """
    out = tensors[0].clone()
    for t in tensors[1:]:
        out = torch.maximum(out, t)
    return out
