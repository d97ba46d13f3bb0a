"""State dicts <-> Flower records, and which keys travel.

What travels between clients and server is one explicit key set: ``travelling_keys(state_dict,
include, exclude)`` with prefix rules, so e.g. a client's task head never leaves it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

__all__ = ["SHARED_KEYS", "travelling_keys", "to_record", "from_record", "num_bytes"]

#: What leaves a client, per experiment: state-dict prefixes (None: every key). Stage one's
#: depend on the SSL method and ``ssl.travel`` (:func:`fedssl.federation.pretraining.
#: travel_prefixes`); the entry here is SimCLR's. A stage-two task head is never listed.
SHARED_KEYS: dict[str, tuple[str, ...] | None] = {
    "supervised": None,
    "pretrain": ("backbone.", "projection_head."),
    # Stage two: at most the backbone, and only its trainable part
    # (BackboneClassifier.trainable_state_keys); "head." never travels.
    "finetune": ("backbone.",),
}


def travelling_keys(
    state_dict: Mapping[str, torch.Tensor],
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[str]:
    """Names whose prefix is in ``include`` (all when None) and in no ``exclude`` prefix."""
    inc = tuple(include) if include is not None else None
    exc = tuple(exclude or ())
    return [
        k
        for k in state_dict
        if (inc is None or k.startswith(inc)) and not (exc and k.startswith(exc))
    ]


def to_record(
    state_dict: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None
) -> ArrayRecord:
    """An ``ArrayRecord`` of the given keys (all when None), detached, on the CPU."""
    names = list(state_dict) if keys is None else list(keys)
    return ArrayRecord({k: state_dict[k].detach().cpu() for k in names})


def _view(arr: Array) -> torch.Tensor:
    """Zero-copy, read-only tensor over an Array's ``.npy`` bytes (never unpickles)."""
    if arr.stype != "numpy.ndarray":
        raise ValueError(f"unsupported array serialization {arr.stype!r}")
    buf = arr.data
    f = io.BytesIO(buf)
    version = np.lib.format.read_magic(f)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        return torch.from_numpy(arr.numpy())
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError("refusing an object array (it would need pickle)")
    a = np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape)), offset=f.tell())
    a = a.reshape(shape, order="F" if fortran else "C")
    if not a.dtype.isnative:
        return torch.from_numpy(a.astype(a.dtype.newbyteorder("=")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffer: we never write to it
        return torch.from_numpy(a)


def from_record(record: ArrayRecord, copy: bool = False) -> dict[str, torch.Tensor]:
    """A torch state dict from an ``ArrayRecord``.

    Args:
        record: the received record.
        copy: return writable copies. By default the tensors are read-only views over the
            message bytes (no copy, which is what keeps aggregation at memory speed); load them
            into a model with ``load_state_dict`` (which copies) or merge them, never write to them.
    """
    out = {k: _view(record[k]) for k in record}
    return {k: v.clone() for k, v in out.items()} if copy else out


def num_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Payload size in bytes (what one client sends or receives per round)."""
    return sum(t.numel() * t.element_size() for t in state_dict.values())
