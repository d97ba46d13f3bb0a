"""Client-level differential privacy's tensor math (DP-FedAvg, McMahan et al. 2018): clip a
client's update, and the noised mean of clipped updates.

An *update* is the difference between a client's floating-point tensors and the global ones
they started from (weights and floating buffers such as BatchNorm's running statistics: all
that leaves the client and depends on its data); its norm is the L2 norm over all of them.
Integer tensors (BatchNorm's batch counters) are not part of it: the merged model keeps the
global ones, so nothing of a client's leaves the server through them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

__all__ = ["update_keys", "update_norm", "clip_update", "noised_mean", "noise_std"]


def update_keys(global_state: Mapping[str, torch.Tensor], keys) -> list[str]:
    """The names of ``keys`` that form an update: floating tensors the global state holds."""
    return [k for k in keys if k in global_state and global_state[k].is_floating_point()]


def update_norm(
    state: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor]
) -> float:
    """The L2 norm of ``state - global_state`` over :func:`update_keys`."""
    sq = 0.0
    for k in update_keys(global_state, state):
        sq += float((state[k].double() - global_state[k].double()).pow(2).sum())
    return math.sqrt(sq)


def clip_update(
    state: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor], clip: float
) -> tuple[dict[str, torch.Tensor], float]:
    """``state`` with its update scaled to an L2 norm of at most ``clip``; other tensors as they
    are. Returns the clipped state and the update's norm before clipping.

    Raises:
        ValueError: a non-positive ``clip``, or a tensor whose shape differs from the global one.
    """
    if clip <= 0:
        raise ValueError(f"the clipping norm must be > 0, got {clip}")
    keys = update_keys(global_state, state)
    for k in keys:
        if state[k].shape != global_state[k].shape:
            raise ValueError(
                f"{k!r}: shape {tuple(state[k].shape)} differs from the global "
                f"{tuple(global_state[k].shape)}"
            )
    norm = update_norm(state, global_state)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    out = dict(state)
    if scale < 1.0:
        for k in keys:
            g = global_state[k].double()
            out[k] = (g + (state[k].double() - g) * scale).to(state[k].dtype)
    return out, norm


def noise_std(noise_multiplier: float, clip: float, clients: int) -> float:
    """The std of the noise on a mean of ``clients`` updates clipped to ``clip``: ``σ·C/n``."""
    return noise_multiplier * clip / max(1, clients)


def noised_mean(
    global_state: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    clip: float,
    noise_multiplier: float,
    clients: int,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """DP-FedAvg's merge: every update clipped to ``clip``, their sum divided by ``clients``
    (the number of clients asked, not of replies: a client that did not answer adds a zero
    update, so one client's influence stays ``clip / clients``), Gaussian noise of std
    :func:`noise_std` added. Integer tensors keep the global value; BatchNorm running
    variances are kept >= 0 after the noise (post-processing).

    Returns:
        The new global values of the states' names (every state holds the same names, all in
        ``global_state``) and each update's norm before clipping.

    Raises:
        ValueError: no states, fewer clients than states, states with different names, or a
            name the global state lacks.
    """
    if not states:
        raise ValueError("noised_mean: no client states")
    if clients < len(states):
        raise ValueError(f"noised_mean: {len(states)} states from {clients} clients asked")
    names = list(states[0])
    unknown = [k for k in names if k not in global_state]
    if unknown:
        raise ValueError(f"noised_mean: {unknown[0]!r} is not in the global state")
    keys = update_keys(global_state, names)
    total = {k: torch.zeros(global_state[k].shape, dtype=torch.float64) for k in keys}
    norms = []
    for i, s in enumerate(states):
        if set(s) != set(names):
            odd = sorted(set(s) ^ set(names))[0]
            raise ValueError(f"noised_mean: state {i} differs from state 0 in {odd!r}")
        clipped, norm = clip_update(s, global_state, clip)
        norms.append(norm)
        for k in keys:
            total[k] += clipped[k].double() - global_state[k].double()
    std = noise_std(noise_multiplier, clip, clients)
    out = {k: global_state[k] for k in names}
    for k in keys:
        d = total[k] / clients
        if std > 0:
            d += torch.randn(d.shape, dtype=torch.float64, generator=generator) * std
        v = global_state[k].double() + d
        if k.endswith("running_var"):
            v = v.clamp_(min=0.0)
        out[k] = v.to(global_state[k].dtype)
    return out, norms
