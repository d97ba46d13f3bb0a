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
