"""launch/noniid.py (paper 004): strategy and skew options, and a small end-to-end run."""

import json

import pytest

from fedssl.cli import resolve_config
from fedssl.experiments.noniid import round_timing, run_name


@pytest.fixture(scope="module")
def noniid(load_launch):
    return load_launch("noniid")


def _cfg(noniid, argv):
    args = noniid.parse_args(argv)
    return resolve_config(args, noniid.overrides(args))[0], args


def test_paper_config_is_the_papers_protocol(noniid):
    cfg, args = _cfg(noniid, [])
    d = cfg.data
    assert (d.name, d.partition, d.dominant_p, d.num_clients) == (
        "mnist",
        "dominant_label",
        0.55,
        10,
    )
    assert cfg.model.name == "mlp" and cfg.federation.rounds == 100
    assert run_name(cfg, args.strategy, args.name) == "noniid-mnist-p0.55-fedavg"


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--strategy", "fedprox"], {"train.prox_mu": 0.01}),
        (["--strategy", "fedprox", "--set", "train.prox_mu=0.1"], {"train.prox_mu": 0.1}),
        (["--strategy", "fedavgm"], {"federation.server_momentum": 0.9}),
        (["--strategy", "fedadam"], {"federation.server_opt": "adam"}),
        (["--strategy", "trimmed_mean"], {"federation.method": "trimmed_mean"}),
        (["--p", "1.0"], {"data.dominant_p": 1.0, "data.partition": "dominant_label"}),
        (["--dirichlet", "0.1"], {"data.partition": "dirichlet", "data.dirichlet_alpha": 0.1}),
        (["--fraction", "0.5", "--clients", "4"], {"federation.fraction_train": 0.5,
                                                   "data.num_clients": 4}),
    ],
)  # fmt: skip
def test_options_become_config(noniid, argv, expect):
    cfg, _ = _cfg(noniid, argv)
    for dotted, value in expect.items():
        section, key = dotted.split(".")
        assert getattr(getattr(cfg, section), key) == value


def test_two_skews_at_once_is_an_error(noniid, capsys):
    assert noniid.main(["--p", "0.8", "--dirichlet", "0.5"]) == 2
    assert "two different skews" in capsys.readouterr().err


def test_small_run_writes_histogram_baseline_and_plot(noniid, tiny_fashion, tmp_path):
    argv = [
        *("--dataset", "fashion_mnist", "--clients", "3", "--rounds", "2", "--p", "0.8"),
        *("--out-dir", str(tmp_path), "--wandb", "disabled", "--name", "nn"),
        *("--set", f"data.root={tiny_fashion}", "data.train_per_client=150"),
        "data.test_per_client=30",
    ]
    assert noniid.main(argv) == 0
    run = tmp_path / "nn"
    table = (run / "label_histogram.md").read_text()
    assert "| 0 | " in table and "| 2 | " in table
    # client 0's dominant label is 0: about 80% of its training images
    row0 = next(line for line in table.splitlines() if line.startswith("| 0 | "))
    assert "(8" in row0.split("|")[2]
    central = json.loads((run / "centralized.json").read_text())
    assert [h["epoch"] for h in central] == [1, 2]
    assert (run / "fed_vs_central.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["clients"] == 3
    summ = json.loads((run / "summary.json").read_text())
    assert summ["fed_acc"] == rows[-1]["merged_acc"] and summ["rounds"] == 2
    assert summ["central_acc"] == central[-1]["test_acc"]
    assert summ["ratio"] == pytest.approx(summ["fed_acc"] / summ["central_acc"])
    assert 0.0 <= summ["overhead_share"] <= 1.0 and summ["s_per_round"] > 0


def test_round_timing_counts_parallel_clients(noniid):
    rows = [
        {"round": 1, "round_s": 9.0, "train_phase_s": 9.0, "train_s_c0": 8.0, "train_s_c1": 8.0},
        {"round": 2, "round_s": 5.0, "train_phase_s": 4.5, "train_s_c0": 3.0, "train_s_c1": 3.0},
        {"round": 3, "round_s": 5.0, "train_phase_s": 4.5, "train_s_c0": 3.0, "train_s_c1": None},
    ]
    one = round_timing(rows, clients_at_once=1)  # round 1 (Ray start) left out
    assert one["s_per_round"] == 5.0 and one["client_compute_s"] == 4.5
    assert one["overhead_share"] == 0.0
    two = round_timing(rows, clients_at_once=2)
    assert two["client_compute_s"] == 2.25
    assert two["overhead_share"] == pytest.approx((4.5 - 2.25) / 5.0)
    # the clients' whole work (work_s) is preferred over the bare fit time when recorded
    for r in rows:
        r["work_s_c0"], r["work_s_c1"] = 4.0, 4.0
    assert round_timing(rows, clients_at_once=2)["client_compute_s"] == 4.0
