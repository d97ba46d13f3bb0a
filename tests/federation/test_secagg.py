"""Secure aggregation through Flower's SecAgg+ in the simulation: the merged model is the plain
unweighted FedAvg one within one quantisation step, the server's strategy never holds a
single client's weights, and settings SecAgg+ cannot serve exit 2 before anything starts."""

import pytest
import torch

from fedssl.config import ConfigError, load_config
from fedssl.federation import strategy as S
from fedssl.federation.secagg import CLEAR
from fedssl.federation.simulation import simulate
from fedssl.runs import RunDir


def _received(monkeypatch, metrics: list | None = None) -> list[list[dict[str, torch.Tensor]]]:
    """What the server's strategy receives in each round: every reply's state dict (and, into
    ``metrics``, every reply's metrics)."""
    seen = []
    real = S.MergeStrategy.aggregate_train

    def record(self, server_round, replies):
        replies = list(replies)
        seen.append(
            [{k: v.clone() for k, v in S.from_record(m.content["arrays"]).items()}
             for m in replies if not m.has_error()]
        )  # fmt: skip
        if metrics is not None:
            metrics.extend(dict(r) for m in replies if not m.has_error()
                           for r in m.content.metric_records.values())  # fmt: skip
        return real(self, server_round, replies)

    monkeypatch.setattr(S.MergeStrategy, "aggregate_train", record)
    return seen


def test_the_server_learns_only_the_mean_within_one_quantisation_step(three_clients, monkeypatch):
    seen = _received(monkeypatch)
    simulate(load_config(None, [*three_clients, "name=plain"]))
    clients = seen[-1]  # the plain run's replies: each client's own trained weights
    metrics: list[dict] = []
    seen = _received(monkeypatch, metrics)
    secure_cfg = load_config(None, [*three_clients, "name=secagg", "privacy.secagg.enabled=true"])
    simulate(secure_cfg)
    secure = seen[-1]
    # of each client, only its partition id reaches the server; its loss only inside the sum
    assert len(metrics) == 3
    for m in metrics:
        own = {k for k in m if not k.startswith("secagg_")}
        assert own <= {*CLEAR, "num-examples", "num_examples"}, own
        assert m["num-examples"] == 1 and m["secagg_clipped"] == 0
    assert {m["secagg_mean_train_loss"] for m in metrics} == {metrics[0]["secagg_mean_train_loss"]}
    row = RunDir(secure_cfg.run_dir()).metrics()[-1]
    assert not any(k.startswith(("train_loss_c", "local_acc_c", "train_s_c")) and row[k] is not None
                   for k in row)  # fmt: skip
    assert row["secagg_mean_train_loss"] > 0
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


@pytest.mark.parametrize("n", [6, 8])
def test_secagg_runs_at_sizes_whose_default_share_count_was_even(three_clients, n):
    # 6 and 8 clients: ceil(log2 n) + 1 = 4, which halted every round before the odd rule
    cfg = load_config(None, [*three_clients, f"name=secagg{n}", f"data.num_clients={n}",
                             f"federation.min_clients={n}", "data.train_per_client=100",
                             "train.local_steps=2", "privacy.secagg.enabled=true",
                             "federation.rounds=2"])  # fmt: skip
    simulate(cfg)
    rows = RunDir(cfg.run_dir()).metrics()
    assert [r["clients"] for r in rows if r["round"] > 0] == [n, n]
