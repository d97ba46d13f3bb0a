"""State dicts <-> Flower records, and which keys travel.

What travels between clients and server is one explicit key set: ``travelling_keys(state_dict,
include, exclude)`` with prefix rules, so e.g. a client's task head never leaves it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from flwr.app import ArrayRecord

__all__ = ["travelling_keys", "to_record", "from_record", "num_bytes"]


def travelling_keys(state_dict: Mapping[str, torch.Tensor], include: Iterable[str] | None = None,
                    exclude: Iterable[str] | None = None) -> list[str]:
    """Names whose prefix is in ``include`` (all when None) and in no ``exclude`` prefix."""
    inc = tuple(include) if include is not None else None
    exc = tuple(exclude or ())
    return [k for k in state_dict
            if (inc is None or k.startswith(inc)) and not (exc and k.startswith(exc))]


def to_record(state_dict: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None) -> ArrayRecord:
    """An ``ArrayRecord`` of the given keys (all when None), detached, on the CPU."""
    names = list(state_dict) if keys is None else list(keys)
    return ArrayRecord({k: state_dict[k].detach().cpu() for k in names})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """A torch state dict from an ``ArrayRecord``."""
    return dict(record.to_torch_state_dict())


def num_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Payload size in bytes (what one client sends or receives per round)."""
    return sum(t.numel() * t.element_size() for t in state_dict.values())
