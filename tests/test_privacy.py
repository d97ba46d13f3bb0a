"""The privacy accountant against an independent computation, the noise it derives from a
target ε, the ledger a resumed run continues, and the settings refused while loading."""

import math
from pathlib import Path

import pytest

from fedssl.config import ConfigError, SecAggConfig, load_config
from fedssl.privacy import ORDERS, Ledger, epsilon, noise_for_epsilon, secagg_shares


def _gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Hand-computed: the Gaussian mechanism's RDP at order a is a / (2 sigma^2) per release
    (Mironov 2017), composed by adding; converted to (eps, delta) with Balle et al. 2020's
    bound, minimised over the same orders."""
    best = math.inf
    for a in ORDERS:
        rdp = steps * a / (2 * sigma**2)
        eps = rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return best


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (1.0, 100), (4.0, 50), (0.7, 10)])
def test_full_participation_matches_the_hand_computed_gaussian_mechanism(sigma, steps):
    assert epsilon([(sigma, 1.0, steps)], 1e-5) == pytest.approx(
        _gaussian_epsilon(sigma, steps, 1e-5), rel=1e-9
    )


def test_sampling_spends_less_and_mixed_histories_compose_within_the_bounds():
    full = epsilon([(1.0, 1.0, 100)], 1e-5)
    sampled = epsilon([(1.0, 0.01, 100)], 1e-5)
    assert sampled < full / 10
    # two different mechanisms (a client whose σ changed between rounds): by RDP composition,
    # more than either alone, and within what basic composition allows, eps1 + eps2 at
    # delta / 2 each (Dwork & Roth 2014, Thm 3.16)
    a, b = (1.0, 0.01, 300), (3.0, 1.0, 20)
    both = epsilon([a, b], 1e-5)
    assert max(epsilon([a], 1e-5), epsilon([b], 1e-5)) < both
    assert both <= epsilon([a], 5e-6) + epsilon([b], 5e-6)
    assert epsilon([], 1e-5) == 0.0 and epsilon([(0.0, 0.1, 1)], 1e-5) == math.inf


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_noise_for_a_target_is_the_smallest_that_keeps_it(target):
    sigma = noise_for_epsilon(target, 1e-5, 0.02, 500)
    assert epsilon([(sigma, 0.02, 500)], 1e-5) <= target
    assert epsilon([(sigma * 0.99, 0.02, 500)], 1e-5) > target


def test_a_resumed_ledger_spends_what_an_uninterrupted_one_does():
    def run(ledger, rounds):
        for r in rounds:
            ledger.add_central(r, 1.1)
            for c in (0, 1):
                ledger.add_client(r, c, 0.9, 0.05, 20 + c)
        return ledger

    whole = run(Ledger(), range(1, 7)).report(1e-5, 1e-5, 1.0)
    first = run(Ledger(), range(1, 5)).to_state()  # stopped after round 4, state.json kept
    resumed = Ledger(first)
    resumed.keep_until(3)  # its last checkpoint was round 3: round 4 runs again
    again = run(resumed, range(4, 7)).report(1e-5, 1e-5, 1.0)
    assert again == whole
    assert whole["central"]["rounds"] == 6 and whole["dp_sgd"]["1"]["steps"] == 6 * 21


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["privacy.dp_sgd.delta=1"], "privacy.dp_sgd.delta: 1.0 is not allowed"),
        (["privacy.dp_sgd.epsilon=0"], "privacy.dp_sgd.epsilon: 0.0 is not allowed"),
        (["privacy.central.noise_multiplier=-0.5"], "noise_multiplier: -0.5 is not allowed"),
        (["privacy.central.clipping=nowhere"], "privacy.central.clipping"),
        (
            ["privacy.dp_sgd.epsilon=2", "privacy.dp_sgd.noise_multiplier=1"],
            "give epsilon .* or noise_multiplier",
        ),
        (["experiment=pretrain", "privacy.dp_sgd.epsilon=8"], "not supported for stage one"),
        (["privacy.dp_sgd.epsilon=8", "model.batchnorm=true"], "model.batchnorm=false"),
        (
            ["experiment=finetune", "finetune.mode=partial", "privacy.dp_sgd.epsilon=8"],
            "finetune.mode=linear",
        ),
        (
            ["experiment=finetune", "finetune.bn=client", "privacy.dp_sgd.epsilon=8"],
            "finetune.bn=merged",
        ),
        (["privacy.central.noise_multiplier=1"], "federation.weighted=false"),
        (
            [
                "privacy.central.noise_multiplier=1",
                "federation.weighted=false",
                "privacy.central.adaptive=true",
                "data.num_clients=10",
            ],
            "must be below 2 \\* clipped_count_stddev = 1",
        ),
        (
            [
                "privacy.central.noise_multiplier=1",
                "federation.weighted=false",
                "federation.method=absmax",
            ],
            "federation.method=avg, not 'absmax'",
        ),  # fmt: skip
    ],
)
def test_settings_that_cannot_be_private_are_refused_while_loading(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_private_settings_that_hold_together_load():
    cfg = load_config(
        None,
        ["privacy.central.noise_multiplier=1.1", "federation.weighted=false",
         "privacy.dp_sgd.epsilon=8", "privacy.central.clipping=client"],
    )  # fmt: skip
    assert cfg.privacy.central.enabled and cfg.privacy.dp_sgd.enabled
    assert not load_config(None).privacy.central.enabled


@pytest.mark.parametrize(
    "clients, shares",
    [(3, 3), (4, 3), (5, 5), (6, 5), (8, 5), (10, 5), (17, 7), (32, 7), (100, 9), (1000, 11)],
)
def test_secagg_neighbourhoods_are_odd_and_grow_with_the_log_of_the_clients(clients, shares):
    # even counts (5-8, 17-32, 65-128 clients) halted every round: Flower raised them by one
    # after the clients had been told, and each held one share too few
    assert secagg_shares(SecAggConfig(), clients) == (shares, shares // 2 + 1)


def test_secagg_shares_that_are_set_are_kept():
    assert secagg_shares(SecAggConfig(num_shares=10), 10) == (10, 6)
    assert secagg_shares(SecAggConfig(reconstruction_threshold=4), 10) == (5, 4)
    with pytest.raises(ConfigError, match="reconstruction_threshold=5 must be below num_shares=5"):
        load_config(Path(__file__).parents[1] / "configs/noniid/paper.yaml",
                    ["privacy.secagg.enabled=true", "federation.weighted=false",
                     "privacy.secagg.reconstruction_threshold=5"])  # fmt: skip


def test_compare_with_dp_sgd_keeps_to_the_linear_heads():
    from fedssl.experiments import table2

    with pytest.raises(ConfigError, match="choose --methods among"):
        table2.Options(finetune_set=["privacy.dp_sgd.epsilon=8"])
    linear = ["raw pixels (linear)", "FL+SSL (linear)"]
    assert (
        table2.Options(finetune_set=["privacy.dp_sgd.epsilon=8"], methods=linear).methods == linear
    )
