"""State dicts <-> Flower records, and which keys travel.

What travels between clients and server is one explicit key set: ``travelling_keys(state_dict,
include, exclude)`` with prefix rules, so e.g. a client's task head never leaves it.

A state dict travels as one packed array (:data:`PACKED`: the tensors in safetensors' layout,
their order kept), not one array per tensor: Flower's deployment engine moves every array of a
message as its own HTTP request, so a ResNet-10 of 84 tensors cost 84 requests each way per
message (seconds per round on loopback). Reading a packed record makes no copy.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

__all__ = ["PACKED", "SHARED_KEYS", "travelling_keys", "to_record", "from_record", "num_bytes"]

#: the one key of a packed record (:func:`to_record`)
PACKED = "fedssl.packed"
_ORDER = "fedssl.keys"  # the packed tensors' order, in the safetensors metadata
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip

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
    state_dict: Mapping[str, torch.Tensor],
    keys: Iterable[str] | None = None,
    packed: bool = True,
) -> ArrayRecord:
    """An ``ArrayRecord`` of the given keys (all when None), detached, on the CPU: packed, one
    ``uint8`` array under :data:`PACKED` (module docstring), which :func:`from_record` reads;
    ``packed=False``: one array per tensor, for Flower's own arithmetic on records (FedOpt)."""
    from safetensors.torch import save

    names = list(state_dict) if keys is None else list(keys)
    tensors = {k: state_dict[k].detach().cpu().contiguous() for k in names}
    if not packed:
        return ArrayRecord(tensors)
    meta = {_ORDER: json.dumps(names)}
    try:
        blob = save(tensors, metadata=meta)
    except (RuntimeError, ValueError):  # tensors that share memory (tied weights): copy them
        blob = save({k: v.clone() for k, v in tensors.items()}, metadata=meta)
    return ArrayRecord({PACKED: Array(np.frombuffer(blob, dtype=np.uint8))})


def _unpack(buf: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero-copy tensors over a packed record's bytes (safetensors' layout: an 8-byte header
    length, a JSON header of dtypes, shapes and offsets, then the data)."""
    raw = buf.numpy()
    try:
        (n,) = struct.unpack("<Q", raw[:8].tobytes())
        header = json.loads(raw[8 : 8 + n].tobytes())
        meta = header.pop("__metadata__", None) or {}
        order = json.loads(meta.get(_ORDER, "null")) or list(header)
        start, out = 8 + n, {}
        for k in order:
            h = header[k]
            dtype, shape, (lo, hi) = _DTYPES[h["dtype"]], h["shape"], h["data_offsets"]
            count = int(np.prod(shape)) if shape else 1
            if not 0 <= lo <= hi <= raw.size - start or hi - lo != count * dtype.itemsize:
                raise ValueError(f"{k!r}: offsets {lo}..{hi} do not fit its shape and dtype")
            t = buf[start + lo : start + hi].view(dtype) if count else torch.empty(0, dtype=dtype)
            out[k] = t.reshape(shape)
    except (KeyError, TypeError, ValueError, struct.error) as err:
        raise ValueError(f"malformed packed record ({type(err).__name__}: {err})") from None
    return out


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
    if PACKED in record:
        if len(record) != 1:
            raise ValueError(f"a packed record holds {PACKED!r} alone, not {len(record)} arrays")
        out = _unpack(_view(record[PACKED]))
    else:  # one array per tensor (what Flower's own helpers build)
        out = {k: _view(record[k]) for k in record}
    return {k: v.clone() for k, v in out.items()} if copy else out


def num_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Payload size in bytes (what one client sends or receives per round)."""
    return sum(t.numel() * t.element_size() for t in state_dict.values())
