"""Weights on the wire: safetensors only, validated tensor by tensor, never unpickled."""

import pickle

import pytest
import torch

from fedssl.hub import weights as W

SPEC_STATE = {"a.weight": torch.ones(2, 3), "a.bias": torch.zeros(2), "n": torch.tensor(3)}


def test_roundtrip_and_spec():
    data = W.encode(SPEC_STATE)
    back = W.decode(data)
    assert all(torch.equal(back[k], v) for k, v in SPEC_STATE.items())
    spec = W.tensor_spec(SPEC_STATE)
    assert spec["a.weight"] == {"dtype": "float32", "shape": [2, 3]}
    assert spec["n"] == {"dtype": "int64", "shape": []}
    W.validate(back, spec)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated or empty"),
        (b"garbage bytes, not a model at all", "not safetensors"),
        (pickle.dumps({"a.weight": [1.0, 2.0]}), "not safetensors"),
    ],
)
def test_bad_bytes_are_refused(data, match):
    with pytest.raises(W.WeightsError, match=match):
        W.decode(data)


def test_truncated_upload_is_refused():
    data = W.encode(SPEC_STATE)
    with pytest.raises(W.WeightsError):
        W.decode(data[: len(data) - 5])


def test_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(W.WeightsError):
        W.decode(pickle.dumps(Evil()))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.pop("a.bias"), "'a.bias': missing"),
        (lambda s: s.update(extra=torch.ones(1)), "'extra': not part of the model"),
        (lambda s: s.update({"a.weight": torch.ones(3, 2)}), r"'a.weight': shape \[3, 2\]"),
        (lambda s: s.update({"a.bias": torch.zeros(2, dtype=torch.float64)}), "dtype float64"),
        (lambda s: s.update({"a.bias": torch.tensor([0.0, float("nan")])}), "'a.bias': holds NaN"),
        (lambda s: s.update({"a.weight": torch.full((2, 3), float("inf"))}), "infinite"),
    ],
)
def test_validation_names_the_first_bad_tensor(change, match):
    spec = W.tensor_spec(SPEC_STATE)
    state = dict(SPEC_STATE)
    change(state)
    with pytest.raises(W.WeightsError, match=match):
        W.validate(state, spec)


def test_join_stops_at_the_limit():
    with pytest.raises(W.WeightsError, match="larger than the limit of 10"):
        W.join(iter([b"12345", b"67890", b"x"]), limit=10)
    assert W.join(iter([b"ab", b"cd"]), limit=10) == b"abcd"
    assert list(W.chunked(b"abcdefg", 3)) == [b"abc", b"def", b"g"]


MIXED = {
    "w": torch.randn(4, 3),
    "half": torch.randn(5).half(),
    "bf": torch.randn(3, 1).bfloat16(),
    "d": torch.randn(2).double(),
    "steps": torch.tensor(7),
    "mask": torch.tensor([True, False, True]),
    "u": torch.arange(5, dtype=torch.uint8),
    "empty": torch.zeros(0, 4),
}


def test_the_codec_reads_and_writes_the_safetensors_format():
    """fedssl's own encoder/decoder agree with the safetensors library both ways, for every
    dtype a model may hold (odd sizes next to each other, 0-d and empty tensors)."""
    from safetensors.torch import load, save

    ours = W.encode(MIXED)
    for back in (load(bytes(ours)), W.decode(save(MIXED)), W.decode(ours)):
        assert back.keys() == MIXED.keys()
        for k, v in MIXED.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
            assert torch.equal(back[k], v), k


def test_decoding_a_bytearray_copies_nothing():
    data = W.encode({"w": torch.arange(6.0)})
    back = W.decode(data)["w"]
    data[-4:] = torch.tensor([42.0]).numpy().tobytes()  # the tensor is a view of the buffer
    assert back[-1] == 42.0
    copied = W.decode(bytes(W.encode({"w": torch.arange(6.0)})))["w"]
    assert copied[-1] == 5.0


def _forged(header: dict, body: bytes) -> bytes:
    import json

    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + body


@pytest.mark.parametrize(
    ("header", "body", "match"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "4 bytes"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4, "offsets"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"a": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "malformed"),
        ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "malformed"),
        ({"a": [1, 2]}, b"", "malformed"),
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            },
            b"\0" * 8,
            "overlap or leave holes",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            b"\0" * 8,
            "after the last",
        ),
        ({"__metadata__": {"x": "y"}}, b"", "no tensors"),
        ([1, 2, 3], b"", "not a JSON object"),
    ],
)
def test_forged_headers_are_refused(header, body, match):
    with pytest.raises(W.WeightsError, match=match):
        W.decode(_forged(header, body))


def test_header_that_is_not_json_is_refused():
    data = (16).to_bytes(8, "little") + b"\xff\xfe not json  !!" + b"\0" * 4
    with pytest.raises(W.WeightsError, match="not JSON"):
        W.decode(data)


@pytest.mark.parametrize("size", [W.CHUNK_BYTES, 7, 64])
def test_streamed_encoding_gives_the_same_bytes_in_bounded_pieces(size):
    """``encode_chunks`` (what ``push`` sends) makes exactly ``encode``'s bytes, in pieces of at
    most ``size`` bytes, even when the header alone is larger than a piece."""
    state = {**MIXED, "big": torch.arange(300_000, dtype=torch.float32)}
    pieces = list(W.encode_chunks(state, size))
    assert b"".join(pieces) == bytes(W.encode(state))
    assert max(map(len, pieces)) <= size and min(map(len, pieces[:-1]), default=size) == size


def test_streamed_encoding_refuses_bad_tensors_before_the_first_piece():
    with pytest.raises(W.WeightsError, match="'b': not a tensor"):
        W.encode_chunks({"a": torch.ones(2), "b": [1.0]})  # raised here, not on next()
    with pytest.raises(W.WeightsError, match="no tensors"):
        W.encode_chunks({})
