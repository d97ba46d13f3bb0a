"""A stage-one run's kNN track (fedssl.experiments.pretrain.knn_tracks), the end-of-run report's
last-rounds window and benchmarks/run_summary.py, on hand-written metrics whose figures are
worked out here."""

import pytest

from fedssl.config import load_config, save_config
from fedssl.experiments.pretrain import knn_tracks, summary
from fedssl.runs import RunDir

# Fashion-MNIST (c0) scored every other round (federation.eval_every=2, and the last round);
# MNIST (c1) never scored after round 1 in this hand-made run; baselines in round 1 only.
ACC_C0 = {1: 0.70, 2: 0.74, 4: 0.81, 6: 0.79, 7: 0.80}
ROWS = [
    {
        "round": r,
        "round_s": 10.0 + r,
        **({"knn_acc_c0": ACC_C0[r]} if r in ACC_C0 else {}),
        **({"knn_acc_c1": 0.9, "knn_pixels_c0": 0.773, "knn_pixels_c1": 0.906} if r == 1 else {}),
        **({"knn_init_c0": 0.4} if r == 1 else {}),
    }
    for r in range(1, 8)
]


@pytest.fixture(scope="module")
def run_summary(load_benchmark):
    return load_benchmark("run_summary")


@pytest.fixture
def run(tmp_path):
    cfg = load_config("configs/pretrain/default.yaml", [f"out_dir={tmp_path}", "name=hand"])
    rd = RunDir(cfg.run_dir())
    rd.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, rd.path / "config.yaml")
    for row in ROWS:
        rd.log_metrics(row)
    return cfg


def test_knn_track_skips_unscored_rounds_and_keeps_the_baselines():
    tracks = knn_tracks(list(reversed(ROWS)), 2)  # order of the rows does not matter
    t = tracks[0]
    assert t.rounds == (1, 2, 4, 6, 7) and t.final == 0.80
    assert (t.pixels, t.init) == (0.773, 0.4)
    mean, lo, hi, n = t.last(3)
    assert mean == pytest.approx((0.81 + 0.79 + 0.80) / 3) and (lo, hi, n) == (0.79, 0.81, 3)
    assert t.last(100)[3] == 5  # a short run: every scored round
    assert t.best() == (0.81, 4)
    assert t.first_at_least(0.773) == 4 and t.first_at_least(0.80) == 4
    assert t.first_at_least(0.82) is None
    assert t.at(4) == 0.81 and t.at(3) is None  # round 3 was not scored
    assert t.minutes() == pytest.approx(sum(10 + r for r in range(1, 8)) / 60)
    assert t.minutes(2) == pytest.approx((11 + 12) / 60)
    assert tracks[1].rounds == (1,) and tracks[1].init is None
    assert knn_tracks([{"round": 1, "round_s": 3.0}], 2) == {}


def test_end_of_run_report_adds_the_last_rounds_window(run):
    report = summary(run)
    assert "round 7" in report[0]
    c0, c1 = report[1:]
    assert "0.8000 (raw pixels 0.7730: +0.0270, above; random init 0.4000)" in c0
    mean = (0.70 + 0.74 + 0.81 + 0.79 + 0.80) / 5
    assert c0.endswith(f"; last 5 evaluated rounds {mean:.4f} (0.7000-0.8100)")
    assert c1.startswith("  client 1 mnist: 0.9000 at round 1 (raw pixels 0.9060")
    assert "last" not in c1  # one scored round: no window to speak of


def test_run_summary_table(run_summary, run, capsys):
    rd = str(run.run_dir())
    assert run_summary.main([rd, "--last", "2", "--at", "4", "3", "--target", "mnist=0.95"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "mean of the last 2 evaluated" in lines[0]
    c0 = [c.strip() for c in lines[2].strip("|").split("|")]
    assert c0 == [
        "hand",
        "fashion_mnist",
        "7",
        f"{sum(10 + r for r in range(1, 8)) / 60:.1f}",
        "0.800",
        "0.795 (0.790-0.800, 2)",
        "0.810 (round 4)",
        "0.773",
        "4",
        "0.810",
        "-",
        "-",  # no target for this client
    ]
    c1 = [c.strip() for c in lines[3].strip("|").split("|")]
    assert c1[1] == "mnist" and c1[8] == "never" and c1[-1] == "never (>= 0.95; 0 of the last 1)"
    assert run_summary.main([rd, "--last", "3", "--target", "fashion_mnist=0.8"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.endswith("| 4 (>= 0.8; 2 of the last 3) |")  # 0.81, 0.79, 0.80


def test_run_summary_until_reads_a_longer_run_at_equal_rounds(run_summary, run, capsys):
    rd = str(run.run_dir())
    assert run_summary.main([rd, "--until", "4", "--last", "2", "--at", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Every run read up to round 4."
    c0 = [c.strip() for c in lines[4].strip("|").split("|")]
    # rounds 1-4 only: scored 1, 2, 4; the best is still round 4, the window rounds 2 and 4
    assert c0[2:7] == [
        "4",
        f"{sum(10 + r for r in range(1, 5)) / 60:.1f}",
        "0.810",
        "0.775 (0.740-0.810, 2)",
        "0.810 (round 4)",
    ]
    assert c0[-1] == "0.740"  # --at 2
    for bad in (["--until", "-1"], ["--until", "3", "--at", "4"]):
        with pytest.raises(SystemExit) as e:
            run_summary.main([rd, *bad])
        assert e.value.code == 2


def test_run_summary_refuses_bad_input(run_summary, run, tmp_path, capsys):
    rd = str(run.run_dir())
    with pytest.raises(SystemExit) as e:
        run_summary.main([str(tmp_path / "nothing")])
    assert e.value.code == 2 and "not a stage-one run directory" in capsys.readouterr().err
    for bad in (["--target", "mnist"], ["--target", "mnist=high"], ["--last", "0"]):
        with pytest.raises(SystemExit) as e:
            run_summary.main([rd, *bad])
        assert e.value.code == 2
    assert run_summary.main([rd, "--target", "cifar10=0.9"]) == 2
    assert "no client of" in capsys.readouterr().err
