"""``merge``: combine clients' state dicts, matched by parameter name, with one named method.

This is the single aggregation entry point of fedssl: Flower's FedAvg step in stage one, the
weight-merge experiments (avg / max / absmax) and the hub's merges all call it.

Rules:

* Parameters are matched **by name**. Without ``keys`` every state dict must hold exactly the same
  names; with ``keys`` each must hold at least those names and only those are merged.
* Per name, every client's tensor must share shape, dtype and device.
* Floating values must be finite.
* Integer and boolean tensors (BatchNorm ``num_batches_tracked``) are never averaged: whatever the
  method, the result is their element-wise maximum (see :func:`fedssl.aggregation.ops.integer_max`).
* ``weights`` (examples per client) are normalised to sum to 1 and used by ``avg``; the other
  methods are unweighted but the weights are still validated.
* Inputs are never modified; results keep the input dtype and device.

Any violation raises ``ValueError`` naming the key and the client index.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import torch

from fedssl.aggregation import ops

__all__ = ["merge", "METHODS", "resolve_method", "first_non_finite"]

_FIXED: dict[str, ops.Op] = {
    "avg": ops.avg,
    "max": ops.maximum,
    "absmax": ops.absmax,
    "absmax_magnitude": ops.absmax_magnitude,
    "median": ops.median,
}
_TRIMMED = re.compile(r"^trimmed_mean(?:\((?P<beta>[0-9.eE+-]+)\))?$")
DEFAULT_TRIM_BETA = 0.2  # Flower's FedTrimmedAvg default

#: Names of the registered methods (``trimmed_mean`` also accepts ``trimmed_mean(0.1)``).
METHODS: tuple[str, ...] = (*_FIXED, "trimmed_mean")


def resolve_method(method: str) -> ops.Op:
    """Return the per-tensor op for a method name.

    Args:
        method: one of :data:`METHODS`, or ``trimmed_mean(beta)``.

    Raises:
        ValueError: for an unknown name or a bad parameter.
    """
    if method in _FIXED:
        return _FIXED[method]
    m = _TRIMMED.match(method) if isinstance(method, str) else None
    if m:
        beta = float(m.group("beta")) if m.group("beta") else DEFAULT_TRIM_BETA
        return ops.make_trimmed_mean(beta)
    raise ValueError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")


def _normalised_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"got {len(w)} weights for {n} state dicts")
    for i, x in enumerate(w):
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"weight of client {i} must be finite and >= 0, got {x}")
    total = sum(w)
    if total <= 0:
        raise ValueError("weights are all zero: at least one client must have a positive weight")
    return [x / total for x in w]


def _names(
    state_dicts: Sequence[Mapping[str, torch.Tensor]], keys: Iterable[str] | None
) -> list[str]:
    first = list(state_dicts[0].keys())
    if keys is not None:
        names = list(dict.fromkeys(keys))
        if not names:
            raise ValueError("keys is empty: nothing to merge")
        for i, sd in enumerate(state_dicts):
            for k in names:
                if k not in sd:
                    raise ValueError(f"key {k!r} is missing from client {i}")
        return names
    ref = set(first)
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd.keys()) != ref:
            missing = [k for k in first if k not in sd]
            if missing:
                raise ValueError(f"key {missing[0]!r} is missing from client {i}")
            extra = [k for k in sd if k not in ref]
            raise ValueError(f"key {extra[0]!r} of client {i} is not in client 0")
    return first


def _check_tensors(name: str, tensors: list[torch.Tensor]) -> None:
    ref = tensors[0]
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"key {name!r} of client {i} is a {type(t).__name__}, not a tensor")
        if t.shape != ref.shape:
            raise ValueError(
                f"key {name!r}: client {i} has shape {tuple(t.shape)}, client 0 {tuple(ref.shape)}"
            )
        if t.dtype != ref.dtype:
            raise ValueError(f"key {name!r}: client {i} has dtype {t.dtype}, client 0 {ref.dtype}")
        if t.device != ref.device:
            raise ValueError(f"key {name!r}: client {i} is on {t.device}, client 0 on {ref.device}")


def _finite(t: torch.Tensor) -> bool:
    # One reduction first; a non-finite sum (NaN/inf, or an overflow of finite values) gets the
    # exact element-wise check.
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _first_non_finite(name: str, tensors: list[torch.Tensor]) -> None:
    for i, t in enumerate(tensors):
        if not _finite(t):
            raise ValueError(f"key {name!r} of client {i} holds a non-finite value (NaN or inf)")


def first_non_finite(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The first name whose floating tensor holds NaN or inf, or None when all are finite."""
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not _finite(t):
            return name
    return None


def merge(
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    method: str = "avg",
    weights: Sequence[float] | None = None,
    keys: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Merge clients' state dicts element-wise with one method.

    Args:
        state_dicts: one mapping name -> tensor per client (at least one).
        method: a name from :data:`METHODS` (``trimmed_mean(beta)`` sets the trim fraction).
        weights: non-negative weight per client (e.g. examples per client); normalised. Used by
            ``avg`` (FedAvg); validated but unused by the other methods. ``None``: equal weights.
        keys: merge only these names (e.g. the backbone's); ``None``: all names.

    Returns:
        A new dict name -> merged tensor, in the order of client 0's keys (or of ``keys``).

    Raises:
        ValueError: empty input, unknown method, bad weights, missing/extra keys, mismatched
            shape/dtype/device, or a non-finite value; the message names the key and client.

    Example:
        >>> a, b = {"w": torch.tensor([1.0, -4.0])}, {"w": torch.tensor([3.0, 2.0])}
        >>> merge([a, b], "absmax")["w"]
        tensor([ 3., -4.])
    """
    if isinstance(state_dicts, Mapping) or not isinstance(state_dicts, Sequence):
        raise ValueError("state_dicts must be a sequence of state dicts (one per client)")
    if len(state_dicts) == 0:
        raise ValueError("state_dicts is empty: need at least one client's state dict")
    for i, sd in enumerate(state_dicts):
        if not isinstance(sd, Mapping):
            raise ValueError(f"client {i} is a {type(sd).__name__}, not a mapping of tensors")
    op = resolve_method(method)
    w = _normalised_weights(weights, len(state_dicts))
    names = _names(state_dicts, keys)

    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in names:
            tensors = [sd[name] for sd in state_dicts]
            _check_tensors(name, tensors)
            if not (tensors[0].is_floating_point() or tensors[0].is_complex()):
                out[name] = ops.integer_max(tensors, w)
                continue
            if op is ops.avg:
                merged = op(tensors, w)
                # A non-finite input always shows in a weighted mean (0 * NaN is NaN as well), so
                # one check of the result replaces a scan of every input on the fast path.
                if not _finite(merged):
                    _first_non_finite(name, tensors)
                    raise ValueError(f"key {name!r}: the merged value is not finite")
            else:
                _first_non_finite(name, tensors)
                merged = op(tensors, w)
            out[name] = merged
    return out
