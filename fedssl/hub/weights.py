"""Weights on the wire and at rest: safetensors bytes, chunked, validated before anything is stored.

Nothing received is ever unpickled: :func:`decode` only parses the safetensors format (a JSON
header and raw little-endian buffers), so a pickle payload is just garbage bytes that fail to
parse.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping

import torch

__all__ = [
    "WeightsError",
    "CHUNK_BYTES",
    "encode",
    "decode",
    "tensor_spec",
    "validate",
    "chunked",
    "sha256",
]

#: bytes per streamed message (the hub allows 8 MiB messages; fewer, larger messages are faster)
CHUNK_BYTES = 4 << 20


class WeightsError(ValueError):
    """Weights that cannot be accepted (bad bytes, wrong tensors, non-finite values)."""


def encode(state: Mapping[str, torch.Tensor]) -> bytes:
    """A state dict as safetensors bytes (tensors copied to contiguous CPU memory)."""
    from safetensors.torch import save

    if not state:
        raise WeightsError("no tensors to encode")
    return save({k: v.detach().to("cpu").contiguous() for k, v in state.items()})


def decode(data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; any malformed input raises :class:`WeightsError`."""
    from safetensors.torch import load

    if len(data) < 8:
        raise WeightsError(f"not safetensors: {len(data)} bytes (truncated or empty upload)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise WeightsError(
            f"not safetensors: the header claims {header_len} bytes but {len(data) - 8} follow "
            "(truncated, garbage or a different format, e.g. a pickle)"
        )
    try:
        out = load(bytes(data))
    except Exception as err:  # safetensors raises its own error types
        raise WeightsError(f"not valid safetensors (truncated or corrupted): {err}") from None
    if not out:
        raise WeightsError("the upload holds no tensors")
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


def join(chunks: Iterable[bytes], limit: int) -> bytes:
    """Concatenate chunks, refusing as soon as the total passes ``limit`` bytes."""
    buf = bytearray()
    for c in chunks:
        buf += c
        if len(buf) > limit:
            raise WeightsError(f"upload larger than the limit of {limit} bytes")
    return bytes(buf)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec_json(spec: Mapping[str, Mapping], builder: Mapping | None = None) -> str:
    """The architecture as stored: the tensor spec plus an optional builder description."""
    return json.dumps({"tensors": dict(spec), "builder": dict(builder or {})}, sort_keys=True)
