"""Differential privacy through Flower's simulation: client-level DP without noise is FedAvg,
clipping bounds what one client moves, client-side clipping bounds what leaves a client, and a
private run resumed after a round spends what an uninterrupted one does."""

import pytest
import torch
from safetensors.torch import load_file

from fedssl.aggregation.dp import update_norm
from fedssl.config import load_config
from fedssl.federation.server_app import privacy_report
from fedssl.federation.simulation import simulate
from fedssl.federation.supervised import initial_state
from fedssl.runs import RunDir


def _last(cfg) -> dict[str, torch.Tensor]:
    rd = RunDir(cfg.run_dir())
    return load_file(str(rd.path / rd.state()["checkpoint"]))


def test_without_noise_and_under_the_norm_it_is_fedavg(three_clients):
    plain = load_config(None, [*three_clients, "name=plain"])
    simulate(plain)
    private = load_config(
        None,
        [*three_clients, "name=dp0", "privacy.central.noise_multiplier=0",
         "privacy.central.clipping_norm=1e6"],
    )  # fmt: skip
    simulate(private)
    a, b = _last(plain), _last(private)
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    rows = RunDir(private.run_dir()).metrics()
    assert rows[-1]["dp_clipped"] == 0.0 and rows[-1]["epsilon_central"] == float("inf")


def test_server_clipping_bounds_the_round(three_clients):
    cfg = load_config(
        None,
        [*three_clients, "name=clip", "federation.rounds=1", "privacy.central.noise_multiplier=0",
         "privacy.central.clipping_norm=0.05"],
    )  # fmt: skip
    simulate(cfg)
    init, new = initial_state(cfg), _last(cfg)
    moved = sum(float((new[k].double() - init[k].double()).pow(2).sum()) for k in init) ** 0.5
    row = RunDir(cfg.run_dir()).metrics()[-1]
    # without noise nothing is claimed, so the clipping record is published to measure it
    assert row["dp_update_norm_max"] > 0.05 and row["dp_clipped"] == 1.0  # every client clipped
    assert moved <= 0.05 * (1 + 1e-5)  # the mean of updates of norm <= C


def test_a_round_that_merged_nothing_still_spends_and_nothing_unnoised_is_published(
    three_clients, monkeypatch
):
    from fedssl.privacy import epsilon

    # round 1: client 0 fails, two replies reach the server but three are needed, so the
    # model is kept; the server held those two updates, so round 1 counts toward ε
    monkeypatch.setenv("FEDSSL_INJECT_FAULT", "0:raise:1")
    cfg = load_config(
        None,
        [*three_clients, "name=unmerged", "federation.rounds=2", "federation.min_replies=3",
         "privacy.central.noise_multiplier=2", "privacy.central.clipping_norm=0.05"],
    )  # fmt: skip
    simulate(cfg)
    rows = RunDir(cfg.run_dir()).metrics()
    assert rows[1]["clients"] == 0 and rows[2]["clients"] == 3
    assert rows[1]["epsilon_central"] == pytest.approx(epsilon([(2.0, 1.0, 1)], 1e-5))
    assert rows[2]["epsilon_central"] == pytest.approx(epsilon([(2.0, 1.0, 2)], 1e-5))
    # with noise, the un-noised norms and clipped share stay on the server
    assert all(r.get("dp_update_norm_max") is None and r.get("dp_clipped") is None for r in rows)
    assert privacy_report(cfg, RunDir(cfg.run_dir()).state())["central"]["rounds"] == 2


def test_client_clipping_bounds_what_leaves_a_client(three_clients, monkeypatch):
    from fedssl.federation import strategy as S

    seen = []
    real = S.MergeStrategy._private_merge

    def record(self, rnd, contents, sent):  # what the server strategy receives
        for c in contents:
            sd = S.from_record(next(iter(c.array_records.values())))
            seen.append(update_norm(sd, self._global))
        return real(self, rnd, contents, sent)

    monkeypatch.setattr(S.MergeStrategy, "_private_merge", record)
    cfg = load_config(
        None,
        [*three_clients, "name=cclip", "federation.rounds=1", "privacy.central.noise_multiplier=1",
         "privacy.central.clipping=client", "privacy.central.clipping_norm=0.05",
         "privacy.central.noise_seed=3"],
    )  # fmt: skip
    simulate(cfg)
    assert len(seen) == 3 and max(seen) <= 0.05 * (1 + 1e-4)


def test_a_resumed_private_run_spends_what_an_uninterrupted_one_does(three_clients):
    private = ["privacy.central.noise_multiplier=1.2", "privacy.central.noise_seed=7",
               "privacy.dp_sgd.noise_multiplier=1.0", "federation.rounds=3"]  # fmt: skip
    whole = load_config(None, [*three_clients, *private, "name=whole"])
    simulate(whole)
    part = load_config(None, [*three_clients, *private, "name=part"])
    part.federation.rounds = 2
    simulate(part)
    part.federation.rounds = 3
    simulate(part, resume=True)
    a = privacy_report(whole, RunDir(whole.run_dir()).state())
    b = privacy_report(part, RunDir(part.run_dir()).state())
    assert a["central"]["rounds"] == 3 and set(a["dp_sgd"]) == {"0", "1", "2"}
    assert b == a
    assert a["dp_sgd"]["0"]["steps"] == 3 * 5


def test_adaptive_clipping_follows_the_quantile_and_survives_resume(three_clients):
    import math

    # no noise and every update far under the norm: the unclipped share is 1, above the 0.5
    # target, so the norm shrinks by exp(-0.2 * 0.5) each round
    private = ["privacy.central.noise_multiplier=0", "privacy.central.adaptive=true",
               "privacy.central.clipping_norm=1000", "federation.rounds=2"]  # fmt: skip
    cfg = load_config(None, [*three_clients, *private, "name=adaptive"])
    cfg.federation.rounds = 1
    simulate(cfg)
    cfg.federation.rounds = 2
    simulate(cfg, resume=True)
    rows = RunDir(cfg.run_dir()).metrics()
    assert rows[1]["dp_clipping_norm"] == pytest.approx(1000)
    assert rows[2]["dp_clipping_norm"] == pytest.approx(1000 * math.exp(-0.1))  # resumed from it
    report = privacy_report(cfg, RunDir(cfg.run_dir()).state())
    assert report["central"]["clipping_norm"] == pytest.approx(1000 * math.exp(-0.2))
