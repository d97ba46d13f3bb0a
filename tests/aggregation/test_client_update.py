"""FedEMA and FedU, the client-side updates of federated SSL, on hand-computed weights."""

import pytest
import torch

from fedssl.aggregation import client as C


def test_divergence_is_the_mean_layer_distance_over_weight_tensors():
    a = {
        "conv.weight": torch.zeros(2, 2),
        "fc.weight": torch.zeros(1, 3),
        "fc.bias": torch.zeros(3),
    }
    b = {
        "conv.weight": torch.tensor([[3.0, 0.0], [0.0, 4.0]]),  # ||.|| = 5
        "fc.weight": torch.tensor([[1.0, 0.0, 0.0]]),  # ||.|| = 1
        "fc.bias": torch.full((3,), 100.0),  # a bias: not a weight tensor, left out
    }
    assert C.divergence(a, b) == pytest.approx(3.0)
    assert C.divergence(a, b, ["fc.weight"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no weight tensors"):
        C.divergence(a, b, ["fc.bias"])
    with pytest.raises(ValueError, match="missing"):
        C.divergence(a, {"conv.weight": b["conv.weight"]})


def test_fedema_lambda_mu_and_the_merged_network():
    lam = C.fedema_lambda(0.7, 2.0)
    assert lam == pytest.approx(0.35)
    assert C.fedema_mu(lam, 2.0) == pytest.approx(0.7)  # mu = tau at the calibrating divergence
    assert C.fedema_mu(lam, 1.0) == pytest.approx(0.35)
    assert C.fedema_mu(lam, 10.0) == 1.0  # capped: a far-off global is ignored
    local = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}
    received = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)}
    out = C.ema_merge(local, received, 0.25)
    assert torch.allclose(out["w"], torch.tensor([0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 6]))
    assert out["n"].item() == 9  # integer buffers take the received value
    with pytest.raises(ValueError, match="fedema_tau"):
        C.fedema_lambda(0.0, 1.0)
    with pytest.raises(ValueError, match="calibrate"):
        C.fedema_lambda(0.5, 0.0)


def test_fedu_takes_the_global_predictor_only_below_the_threshold():
    assert C.fedu_predictor_is_global(0.39, 0.4)
    assert not C.fedu_predictor_is_global(0.4, 0.4)
    assert not C.fedu_predictor_is_global(2.0, 0.4)
