"""Client-side aggregation of federated SSL: what a client does with the merged weights it
receives, given its own weights from its last participation (Zhuang et al.). Pure functions on
state dicts; :mod:`fedssl.federation.pretraining` keeps the client's state between rounds.

* **divergence** between two networks: the mean, over their weight tensors (convolutions and
  linear layers: tensors of 2 or more dimensions), of the L2 norm of the difference. The mean
  over layers (as in the FedSSL reference code) makes it comparable across depths; the scale
  does not matter for FedEMA, whose lambda is calibrated on it.
* **FedEMA** (ICLR 2022): the online network becomes ``mu * local + (1 - mu) * global`` with
  ``mu = min(lambda * divergence(local, global), 1)``; ``lambda = tau / d0`` is calibrated once,
  on the client's first participation, from ``d0`` the divergence its first local training
  made (the trained weights against the received ones), so that ``mu = tau`` at that divergence.
* **FedU** (ICCV 2021): the online encoder takes the global one; the predictor takes the global
  predictor only when ``divergence(local, global) < threshold``, and stays local otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["divergence", "fedema_lambda", "fedema_mu", "ema_merge", "fedu_predictor_is_global"]


def _weights(state: Mapping[str, torch.Tensor], keys: Iterable[str] | None) -> list[str]:
    names = list(state) if keys is None else list(keys)
    return [k for k in names if state[k].is_floating_point() and state[k].dim() >= 2]


def divergence(
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    keys: Iterable[str] | None = None,
) -> float:
    """Mean over the weight tensors (``keys``, or every key of ``a``) of ``||a - b||_2``.

    Raises:
        ValueError: no weight tensor among the keys, or a key missing from ``b``.
    """
    names = _weights(a, keys)
    if not names:
        raise ValueError("divergence: no weight tensors (2+ dimensions) among the keys")
    missing = [k for k in names if k not in b]
    if missing:
        raise ValueError(f"divergence: {missing[0]!r} is missing from the other network")
    total = sum(torch.linalg.vector_norm(a[k].double() - b[k].double()).item() for k in names)
    return total / len(names)


def fedema_lambda(tau: float, first_divergence: float) -> float:
    """FedEMA's lambda from ``tau`` and the divergence of the first local training.

    Raises:
        ValueError: ``tau`` outside (0, 1] or a divergence that is not positive.
    """
    if not 0 < tau <= 1:
        raise ValueError(f"fedema_tau must be in (0, 1], got {tau}")
    if not first_divergence > 0:
        raise ValueError(f"FedEMA cannot calibrate lambda on a divergence of {first_divergence}")
    return tau / first_divergence


def fedema_mu(lam: float, div: float) -> float:
    """FedEMA's weight of the local network: ``min(lambda * divergence, 1)``."""
    return min(lam * div, 1.0)


def ema_merge(
    local: Mapping[str, torch.Tensor],
    received: Mapping[str, torch.Tensor],
    mu: float,
    keys: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """``mu * local + (1 - mu) * received`` for floating-point tensors (``keys``, or every
    received key); integer buffers (BatchNorm's batch counter) take the received value."""
    out = {}
    for k in received if keys is None else keys:
        g = received[k]
        if g.is_floating_point():
            out[k] = mu * local[k].to(g.dtype) + (1.0 - mu) * g
        else:
            out[k] = g.clone()
    return out


def fedu_predictor_is_global(div: float, threshold: float) -> bool:
    """FedU's divergence-aware predictor update: take the global predictor when the divergence
    is below ``threshold``."""
    return div < threshold
