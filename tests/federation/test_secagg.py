"""Secure aggregation through Flower's SecAgg+ in the simulation: the merged model is the plain
unweighted FedAvg one within one quantisation step, the server's strategy never holds a
single client's weights, and settings SecAgg+ cannot serve exit 2 before anything starts."""

import pytest
import torch

from fedssl.config import ConfigError, load_config
from fedssl.federation import strategy as S
from fedssl.federation.simulation import simulate


def _received(monkeypatch) -> list[list[dict[str, torch.Tensor]]]:
    """What the server's strategy receives in each round: every reply's state dict."""
    seen = []
    real = S.MergeStrategy.aggregate_train

    def record(self, server_round, replies):
        replies = list(replies)
        seen.append(
            [{k: v.clone() for k, v in S.from_record(m.content["arrays"]).items()}
             for m in replies if not m.has_error()]
        )  # fmt: skip
        return real(self, server_round, replies)

    monkeypatch.setattr(S.MergeStrategy, "aggregate_train", record)
    return seen


def test_the_server_learns_only_the_mean_within_one_quantisation_step(three_clients, monkeypatch):
    seen = _received(monkeypatch)
    simulate(load_config(None, [*three_clients, "name=plain"]))
    clients = seen[-1]  # the plain run's replies: each client's own trained weights
    simulate(load_config(None, [*three_clients, "name=secagg", "privacy.secagg.enabled=true"]))
    secure = seen[-1]
    assert len(clients) == 3 and len(secure) == 3
    mean = {k: torch.stack([c[k].double() for c in clients]).mean(0) for k in clients[0]}
    step = 2 * 8.0 / 2**22  # 2 * clipping_range / quantization_range
    for k in mean:
        # every reply the strategy sees is the same: the mean, to within one step
        assert all(torch.equal(r[k], secure[0][k]) for r in secure), k
        assert (secure[0][k].double() - mean[k]).abs().max() <= step * 1.01, k
    # and it is no client's own update
    for c in clients:
        assert max((secure[0][k].double() - c[k].double()).abs().max() for k in c) > 100 * step


@pytest.mark.parametrize(
    "extra,match",
    [
        (["federation.method=absmax"], "privacy.secagg needs federation.method=avg"),
        (["federation.weighted=true"], "federation.weighted=false"),
        (["data.num_clients=2", "federation.min_clients=2"], "at least 3 clients per round"),
        (["privacy.secagg.reconstruction_threshold=3"], "must be below num_shares=3"),
        (["privacy.secagg.num_shares=4"], "more than the 3 clients"),
        (["privacy.central.noise_multiplier=1"], "privacy.central.clipping=client"),
        (
            [
                "privacy.central.noise_multiplier=0.1",
                "privacy.central.clipping=client",
                "privacy.central.adaptive=true",
            ],
            "bit would travel outside the secure sum",
        ),  # fmt: skip
    ],
)
def test_settings_secagg_cannot_serve_are_refused(three_clients, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [*three_clients, "privacy.secagg.enabled=true", *extra])


def test_a_launcher_exits_2_naming_the_setting_and_writes_nothing(load_launch, tmp_path, capsys):
    main = load_launch("merge").main
    argv = ["--set", f"out_dir={tmp_path}", "privacy.secagg.enabled=true",
            "federation.weighted=false", "federation.method=max", "data.num_clients=4"]  # fmt: skip
    assert main(argv) == 2
    assert "privacy.secagg needs federation.method=avg, not 'max'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
