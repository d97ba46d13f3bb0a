"""Weights on the wire and at rest: safetensors bytes, chunked, validated before anything is stored.

Nothing received is ever unpickled: :func:`decode` only parses the safetensors format (a JSON
header and raw little-endian buffers), so a pickle payload is just garbage bytes that fail to
parse.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterable, Iterator, Mapping

import torch

__all__ = [
    "WeightsError",
    "CHUNK_BYTES",
    "encode",
    "encode_chunks",
    "decode",
    "tensor_spec",
    "validate",
    "chunked",
    "sha256",
]

#: bytes per streamed message (the hub allows 8 MiB messages). Measured on a ResNet-50 over
#: loopback (benchmarks/hub.py throughput): 1 MiB beat 256 KiB, 512 KiB, 2, 4 and 16 MiB
CHUNK_BYTES = 1 << 20


class WeightsError(ValueError):
    """Weights that cannot be accepted (bad bytes, wrong tensors, non-finite values)."""


#: safetensors dtype names <-> torch dtypes (the formats a hub model may use)
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CODES = {v: k for k, v in DTYPES.items()}
_LITTLE = sys.byteorder == "little"


def _layout(state: Mapping[str, torch.Tensor]) -> tuple[bytes, list[torch.Tensor], int]:
    """``(prefix, tensors in file order, total size)`` of ``state`` as safetensors: the prefix
    is the 8-byte length and the JSON header; the tensors' raw bytes follow it in that order."""
    if not state:
        raise WeightsError("no tensors to encode")
    tensors = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"tensor {k!r}: not a tensor ({type(v).__name__})")
        if v.dtype not in _CODES:
            raise WeightsError(f"tensor {k!r}: dtype {v.dtype} cannot be stored")
        tensors[k] = v.detach().to("cpu").contiguous()
    # largest element size first: every tensor stays aligned
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header, offset = {}, 0
    for k in order:
        t = tensors[k]
        size = t.numel() * t.element_size()
        header[k] = {
            "dtype": _CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    prefix = len(head).to_bytes(8, "little") + head
    return prefix, [tensors[k] for k in order], len(prefix) + offset


def _raw(t: torch.Tensor) -> memoryview:
    """A tensor's bytes, without a copy."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def encode(state: Mapping[str, torch.Tensor]) -> bytearray:
    """A state dict as safetensors bytes (readable by ``safetensors.torch.load``).

    Written straight into one buffer: the JSON header, then every tensor's raw little-endian
    bytes (largest element size first, so every tensor stays aligned), one copy per tensor.
    """
    if not _LITTLE:  # pragma: no cover - big-endian hosts take the library's path
        from safetensors.torch import save

        return bytearray(save({k: v.detach().cpu().contiguous() for k, v in state.items()}))
    prefix, tensors, total = _layout(state)
    buf = bytearray(total)
    buf[: len(prefix)] = prefix
    view, at = memoryview(buf), len(prefix)
    for t in tensors:
        n = t.numel() * t.element_size()
        if n:
            view[at : at + n] = _raw(t)
        at += n
    return buf


def encode_chunks(state: Mapping[str, torch.Tensor], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """:func:`encode`'s bytes as pieces of at most ``size`` bytes, made while they are sent:
    no whole-file buffer, one copy of every byte. Bad tensors raise here, before the first
    piece (the iterator is built eagerly), not in the middle of a stream."""
    if not _LITTLE:  # pragma: no cover
        return chunked(encode(state), size)
    prefix, tensors, _ = _layout(state)

    def pieces() -> Iterator[bytes]:
        parts, filled = [], 0
        for src in [memoryview(prefix), *(_raw(t) for t in tensors if t.numel())]:
            i = 0
            while i < len(src):
                take = min(size - filled, len(src) - i)
                parts.append(src[i : i + take])
                filled, i = filled + take, i + take
                if filled == size:
                    yield b"".join(parts)
                    parts, filled = [], 0
        if parts:
            yield b"".join(parts)

    return pieces()


def _header(data) -> tuple[dict, int]:
    """The parsed, checked header of safetensors ``data`` and where its byte buffer starts."""
    if len(data) < 8:
        raise WeightsError(f"not safetensors: {len(data)} bytes (truncated or empty upload)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise WeightsError(
            f"not safetensors: the header claims {n} bytes but {len(data) - 8} follow "
            "(truncated, garbage or a different format, e.g. a pickle)"
        )
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"not safetensors: the header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise WeightsError("not safetensors: the header is not a JSON object")
    header.pop("__metadata__", None)
    if not header:
        raise WeightsError("the upload holds no tensors")
    body = len(data) - 8 - n
    spans = []
    for name, entry in header.items():
        try:
            dtype = DTYPES[entry["dtype"]]
            shape, (a, b) = list(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError(f"tensor {name!r}: malformed header entry ({err!r})") from None
        if not all(type(d) is int and d >= 0 for d in shape) or not (
            type(a) is int and type(b) is int and 0 <= a <= b <= body
        ):
            raise WeightsError(f"tensor {name!r}: bad shape or offsets (truncated or corrupted)")
        if (b - a) != math.prod(shape) * dtype.itemsize:
            raise WeightsError(
                f"tensor {name!r}: {b - a} bytes for shape {shape} of {entry['dtype']}"
            )
        spans.append((a, b))
    spans.sort()
    end = 0
    for a, b in spans:
        if a != end:
            raise WeightsError("not valid safetensors: tensors overlap or leave holes")
        end = b
    if end != body:
        raise WeightsError(f"not valid safetensors: {body - end} bytes after the last tensor")
    return header, 8 + n


def decode(data: bytes | bytearray) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; any malformed input raises :class:`WeightsError`.

    Only the format is parsed (a JSON header and raw buffers; nothing is ever unpickled) and
    every offset, shape and size is checked first. A ``bytearray`` is decoded without copying:
    the tensors share its memory (so it must not change afterwards); ``bytes`` are copied once.
    """
    header, start = _header(data)
    if not _LITTLE:  # pragma: no cover
        from safetensors.torch import load

        return load(bytes(data))
    buf = data if isinstance(data, bytearray) else bytearray(data)
    out = {}
    for name, entry in header.items():
        dtype, shape = DTYPES[entry["dtype"]], entry["shape"]
        a, b = entry["data_offsets"]
        if b == a:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        n = (b - a) // dtype.itemsize
        out[name] = torch.frombuffer(buf, dtype=dtype, count=n, offset=start + a).view(shape)
    return out


def tensor_spec(state: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """``{name: {"dtype": "float32", "shape": [..]}}`` — the architecture a model's uploads
    must match."""
    return {
        k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
        for k, v in sorted(state.items())
    }


def validate(state: Mapping[str, torch.Tensor], spec: Mapping[str, Mapping]) -> None:
    """Check names, shapes, dtypes and finiteness against ``spec``.

    Raises:
        WeightsError: naming the first bad tensor (sorted by name).
    """
    missing = sorted(set(spec) - set(state))
    extra = sorted(set(state) - set(spec))
    if missing:
        raise WeightsError(f"tensor {missing[0]!r}: missing ({len(missing)} missing in all)")
    if extra:
        raise WeightsError(
            f"tensor {extra[0]!r}: not part of the model ({len(extra)} unexpected in all)"
        )
    for name in sorted(spec):
        t, want = state[name], spec[name]
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype != want["dtype"]:
            raise WeightsError(f"tensor {name!r}: dtype {dtype}, the model has {want['dtype']}")
        if list(t.shape) != list(want["shape"]):
            raise WeightsError(
                f"tensor {name!r}: shape {list(t.shape)}, the model has {list(want['shape'])}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WeightsError(f"tensor {name!r}: holds NaN or infinite values")


def chunked(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (zero-copy views)."""
    view = memoryview(data)
    for i in range(0, len(data), size):
        yield bytes(view[i : i + size])


def join(chunks: Iterable[bytes], limit: int, digest=None) -> bytearray:
    """Concatenate chunks, refusing as soon as the total passes ``limit`` bytes (a
    ``bytearray``: :func:`decode` reads it without another copy). ``digest`` (a ``hashlib``
    object) is updated with every chunk as it arrives."""
    buf = bytearray()
    for c in chunks:
        buf += c
        if len(buf) > limit:
            raise WeightsError(f"upload larger than the limit of {limit} bytes")
        if digest is not None:
            digest.update(c)
    return buf


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec_json(spec: Mapping[str, Mapping], builder: Mapping | None = None) -> str:
    """The architecture as stored: the tensor spec plus an optional builder description."""
    return json.dumps({"tensors": dict(spec), "builder": dict(builder or {})}, sort_keys=True)
