"""Tests for fedssl.aggregation: hand-computed values, every error case, and properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedssl.aggregation import METHODS, merge

A = {"w": torch.tensor([1.0, -4.0, 2.0, 0.5]), "n": torch.tensor(3)}
B = {"w": torch.tensor([3.0, 2.0, -2.0, -6.0]), "n": torch.tensor(5)}
C = {"w": torch.tensor([-5.0, 1.0, 2.0, 1.5]), "n": torch.tensor(4)}


def close(t, values):
    assert torch.allclose(t, torch.tensor(values, dtype=t.dtype)), t


def test_methods_registry():
    assert set(METHODS) == {"avg", "max", "absmax", "absmax_magnitude", "median", "trimmed_mean"}


def test_avg_equal_weights():
    close(merge([A, B], "avg")["w"], [2.0, -1.0, 0.0, -2.75])


def test_avg_weighted_is_fedavg():
    # weights 1 and 3 -> 0.25 * A + 0.75 * B
    close(merge([A, B], "avg", weights=[10, 30])["w"], [2.5, 0.5, -1.0, -4.375])


def test_avg_zero_weight_client_is_ignored():
    close(merge([A, B], "avg", weights=[0, 7])["w"], [3.0, 2.0, -2.0, -6.0])


def test_max():
    close(merge([A, B, C], "max")["w"], [3.0, 2.0, 2.0, 1.5])


def test_absmax_keeps_sign():
    close(merge([A, B, C], "absmax")["w"], [-5.0, -4.0, 2.0, -6.0])


def test_absmax_tie_goes_to_first_client():
    x = {"w": torch.tensor([2.0, -3.0])}
    y = {"w": torch.tensor([-2.0, 3.0])}
    close(merge([x, y], "absmax")["w"], [2.0, -3.0])
    close(merge([y, x], "absmax")["w"], [-2.0, 3.0])


def test_absmax_magnitude_drops_sign():
    close(merge([A, B, C], "absmax_magnitude")["w"], [5.0, 4.0, 2.0, 6.0])


def test_median_odd_and_even():
    close(merge([A, B, C], "median")["w"], [1.0, 1.0, 2.0, 0.5])
    close(merge([A, B], "median")["w"], [2.0, -1.0, 0.0, -2.75])


def test_trimmed_mean():
    five = [{"w": torch.tensor([float(v)])} for v in (100.0, 1.0, 2.0, 3.0, -50.0)]
    close(merge(five, "trimmed_mean(0.2)")["w"], [2.0])  # drops 100 and -50
    close(merge(five, "trimmed_mean(0.0)")["w"], [11.2])
    close(merge(five, "trimmed_mean")["w"], [2.0])  # default beta 0.2


def test_integer_buffers_take_max_for_every_method():
    for method in METHODS:
        out = merge([A, B, C], method)
        assert out["n"].dtype == torch.int64 and int(out["n"]) == 5


def test_keys_restricts_merge():
    a = {"backbone.w": torch.ones(2), "head.w": torch.zeros(3)}
    b = {"backbone.w": 3 * torch.ones(2), "head.w": torch.ones(5)}  # heads differ in shape
    out = merge([a, b], "avg", keys=["backbone.w"])
    assert list(out) == ["backbone.w"]
    close(out["backbone.w"], [2.0, 2.0])


def test_matches_by_name_not_position():
    a = {"x": torch.tensor([1.0]), "y": torch.tensor([10.0])}
    b = {"y": torch.tensor([30.0]), "x": torch.tensor([3.0])}
    out = merge([a, b], "avg")
    close(out["x"], [2.0])
    close(out["y"], [20.0])


def test_inputs_not_modified_and_dtype_device_kept():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, -6.0], dtype=torch.float16)}
    before = [a["w"].clone(), b["w"].clone()]
    for method in METHODS:
        out = merge([a, b], method)
        assert out["w"].dtype == torch.float16 and out["w"].device == a["w"].device
        assert out["w"] is not a["w"] and out["w"] is not b["w"]
    assert torch.equal(a["w"], before[0]) and torch.equal(b["w"], before[1])


def test_single_client_returns_copy():
    out = merge([A], "avg")
    assert torch.equal(out["w"], A["w"]) and out["w"].data_ptr() != A["w"].data_ptr()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: merge([], "avg"), "empty"),
        (lambda: merge(A, "avg"), "sequence"),
        (lambda: merge([A, "x"], "avg"), "client 1"),
        (lambda: merge([A, B], "mean"), "unknown merge method 'mean'"),
        (lambda: merge([A, B], "trimmed_mean(0.5)"), "beta"),
        (lambda: merge([A, B], "avg", weights=[1]), "2 state dicts"),
        (lambda: merge([A, B], "avg", weights=[1, -1]), "client 1"),
        (lambda: merge([A, B], "avg", weights=[0, 0]), "all zero"),
        (lambda: merge([A, B], "avg", weights=[1, math.nan]), "client 1"),
        (lambda: merge([A, B], "avg", keys=[]), "empty"),
        (lambda: merge([A, B], "avg", keys=["v"]), "'v' is missing from client 0"),
        (lambda: merge([A, {"w": B["w"]}], "avg"), "'n' is missing from client 1"),
        (lambda: merge([A, {**B, "z": B["w"]}], "avg"), "'z' of client 1"),
        (lambda: merge([A, {**B, "w": torch.zeros(3)}], "avg"), "'w': client 1 has shape (3,)"),
        (lambda: merge([A, {**B, "w": B["w"].double()}], "avg"), "'w': client 1 has dtype"),
        (lambda: merge([A, {**B, "w": [1.0]}], "avg"), "'w' of client 1 is a list"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_names_key_and_client(method, bad):
    c = {**C, "w": torch.tensor([1.0, bad, 0.0, 0.0])}
    with pytest.raises(ValueError, match=r"key 'w' of client 2 holds a non-finite"):
        merge([A, B, c], method)


# ---------------------------------------------------------------- properties

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3)
dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    dtype=dtypes,
    n=st.integers(1, 6),
    method=st.sampled_from([*METHODS, "trimmed_mean(0.3)"]),
    seed=st.integers(0, 2**16),
    weights=st.none() | st.lists(st.floats(0.1, 100.0), min_size=6, max_size=6),
)
def test_merging_copies_of_one_model_returns_it(shape, dtype, n, method, seed, weights):
    g = torch.Generator().manual_seed(seed)
    model = {
        "a": torch.randn(shape, generator=g).to(dtype),
        "b": torch.randn(3, generator=g).to(dtype),
        "steps": torch.randint(0, 100, (), generator=g),
    }
    if method == "absmax_magnitude":
        model = {k: (v.abs() if v.is_floating_point() else v) for k, v in model.items()}
    w = None if weights is None else weights[:n]
    out = merge([model] * n, method, weights=w)
    for k, v in model.items():
        assert out[k].dtype == v.dtype
        tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6
        assert torch.allclose(out[k].double(), v.double(), rtol=tol, atol=tol), (k, out[k], v)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_order_invariance_of_symmetric_methods(n, seed):
    g = torch.Generator().manual_seed(seed)
    sds = [{"w": torch.randn(7, generator=g)} for _ in range(n)]
    perm = torch.randperm(n, generator=g).tolist()
    for method in ("avg", "max", "absmax_magnitude", "median", "trimmed_mean"):
        x = merge(sds, method)["w"]
        y = merge([sds[i] for i in perm], method)["w"]
        assert torch.allclose(x, y, atol=1e-6)


def test_large_finite_values_are_not_mistaken_for_overflow():
    big = {"w": torch.full((8,), 3e38)}
    assert torch.equal(merge([big, big], "avg")["w"], big["w"])


def test_first_non_finite():
    from fedssl.aggregation import first_non_finite

    assert first_non_finite({"a": torch.ones(2), "n": torch.tensor(3)}) is None
    assert first_non_finite({"a": torch.ones(2), "b": torch.tensor([1.0, math.inf])}) == "b"
    assert first_non_finite({"big": torch.full((4,), 3e38)}) is None  # overflowing sum, finite
