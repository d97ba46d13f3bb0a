"""End to end in Flower's simulation engine on tiny idx data: rounds, metrics, checkpoints,
W&B offline files, and resume from the last completed round."""

import csv

import pytest
import torch
from safetensors.torch import load_file

from fedssl.config import load_config
from fedssl.federation.simulation import simulate
from fedssl.federation.supervised import weights_fingerprint
from fedssl.runs import RunDir


@pytest.fixture
def cfg(tiny_fashion, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    return load_config(
        None,
        [
            "name=sim",
            f"out_dir={tmp_path}",
            f"data.root={tiny_fashion}",
            "data.train_per_client=300",
            "data.test_per_client=50",
            "data.partition=label_split",
            "model.width=4",
            "model.hidden=16",
            "train.local_steps=8",
            "train.batch_size=32",
            "federation.rounds=2",
            "tracking.wandb=offline",
        ],
    )


def test_rounds_metrics_checkpoints_and_resume(cfg):
    cfg.federation.rounds = 1
    cfg.federation.server_momentum = 0.5  # FedAvgM: its momentum buffer must survive resume
    simulate(cfg)
    rd = RunDir(cfg.run_dir())
    velocity1 = rd.load_tensors("server_momentum.safetensors")
    assert velocity1 and all(v.is_floating_point() for v in velocity1.values())
    rows = rd.metrics()
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["clients"] == 2 and rows[1]["failures"] == 0
    assert 0.0 <= rows[1]["local_acc_c0"] <= 1.0 and rows[1]["local_acc_c1"] is not None
    assert rd.state()["round"] == 1
    ckpt1 = load_file(str(rd.path / rd.state()["checkpoint"]))
    # round 1 started from the seeded initial weights, identical on both clients
    assert rows[1]["received_fingerprint_c0"] == pytest.approx(rows[1]["received_fingerprint_c1"])
    with open(rd.metrics_csv) as f:
        assert [r["round"] for r in csv.DictReader(f)] == ["0", "1"]
    assert (rd.path / "accuracy.png").stat().st_size > 1000
    assert (rd.path / "config.yaml").is_file() and (rd.path / "partition.json").is_file()
    assert list((rd.path / "wandb").glob("offline-run-*/run-*.wandb"))

    # resume: round 2 must start from the saved round-1 weights and the saved round counter
    cfg.federation.rounds = 2
    simulate(cfg, resume=True)
    rows = rd.metrics()
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rd.state()["round"] == 2
    expected = weights_fingerprint(ckpt1)
    assert rows[2]["received_fingerprint_c0"] == pytest.approx(expected, rel=1e-9)
    assert rows[2]["received_fingerprint_c1"] == pytest.approx(expected, rel=1e-9)
    ckpt2 = load_file(str(rd.path / rd.state()["checkpoint"]))
    assert set(ckpt2) == set(ckpt1)
    assert not all(torch.equal(ckpt1[k], ckpt2[k]) for k in ckpt1)
    # the saved buffer is the one that produced round 2's weights (server_lr 1: new = old + v)
    velocity2 = rd.load_tensors("server_momentum.safetensors")
    key = next(k for k in velocity1 if k.endswith("weight"))
    assert torch.allclose(velocity2[key], ckpt2[key] - ckpt1[key], atol=1e-6)
    assert not torch.allclose(velocity2[key], velocity1[key])


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no completed round"):
        RunDir(tmp_path / "empty").load_checkpoint()


def test_non_finite_client_replies_are_left_out(cfg):
    # a learning rate this large turns every client's weights into inf/NaN within a few steps
    from fedssl.federation.strategy import FederationFailed

    cfg.name, cfg.federation.rounds, cfg.train.lr = "diverge", 1, 1e30
    with pytest.raises(FederationFailed, match="first client error: non-finite value in"):
        simulate(cfg)  # no round merged: the run failed, and wrote no weights
    rd = RunDir(cfg.run_dir())
    row = rd.metrics()[-1]
    assert row["round"] == 1 and row["clients"] == 0 and row["failures"] == 2
    assert rd.state().get("checkpoint") is None and "non-finite" in rd.state()["failed"]


def test_flower_fedadam_over_a_robust_merge_and_its_moments_survive_resume(cfg):
    from fedssl.federation.supervised import initial_state

    cfg.name, cfg.federation.rounds = "fedadam", 1
    cfg.federation.method = "median"
    cfg.federation.server_opt = "adam"
    cfg.federation.server_opt_args = {"eta": 0.01}
    simulate(cfg)
    rd = RunDir(cfg.run_dir())
    moments = rd.load_tensors("server_opt.safetensors")
    init = initial_state(cfg)
    assert {k[2:] for k in moments if k.startswith("m.")} == set(init)
    assert {k[2:] for k in moments if k.startswith("v.")} == set(init)
    ckpt1 = load_file(str(rd.path / rd.state()["checkpoint"]))
    assert all(ckpt1[k].dtype == init[k].dtype for k in init)  # Flower's float64 cast back
    # Adam's first step moves every weight by about eta (bias-corrected m / sqrt(v))
    step = (ckpt1["classifier.5.bias"] - init["classifier.5.bias"]).abs()
    assert torch.all(step > 0.001) and torch.all(step < 0.02)

    cfg.federation.rounds = 2
    simulate(cfg, resume=True)
    moments2 = rd.load_tensors("server_opt.safetensors")
    key = "v.classifier.5.bias"
    # v_2 = beta_2 * v_1 + (1 - beta_2) * d_2^2 >= 0.99 * v_1: the resumed run continued v_1
    assert torch.all(moments2[key] >= 0.99 * moments[key] - 1e-12)
    assert not torch.equal(moments2[key], moments[key])


def test_server_optimizer_choices_are_checked():
    from fedssl.federation.strategy import build_strategy

    with pytest.raises(ValueError, match="unknown server optimizer 'sgd'"):
        build_strategy("sgd")
    with pytest.raises(ValueError, match="leave server_momentum at 0"):
        build_strategy("adam", server_momentum=0.9)
    s = build_strategy("yogi", {"eta": 0.05}, method="trimmed_mean", round_offset=3)
    assert s.eta == 0.05 and s.method == "trimmed_mean" and s.round_offset == 3


def test_failing_and_hanging_clients_do_not_stop_the_run(cfg, monkeypatch):
    """Three clients: in round 1 client 1 raises, in round 2 client 2 sleeps past the timeout;
    each round merges the replies that arrived and logs who was missing."""
    cfg.name, cfg.data.num_clients, cfg.data.partition = "faults", 3, "iid"
    cfg.data.train_per_client, cfg.data.test_per_client = 150, 30
    cfg.federation.min_clients, cfg.federation.timeout_s = 3, 45.0
    cfg.federation.min_replies = 2
    cfg.federation.cpus_per_client = 0.6  # three actors on this 2-core machine
    monkeypatch.setenv("FEDSSL_INJECT_FAULT", "1:raise:1,2:hang:60:2")
    simulate(cfg)
    rows = {r["round"]: r for r in RunDir(cfg.run_dir()).metrics()}
    assert rows[1]["clients"] == 2 and rows[1]["failures"] == 1 and rows[1]["timeouts"] == 0
    assert rows[1].get("local_acc_c1") is None and rows[1].get("local_acc_c2") is not None
    assert rows[2]["clients"] == 2 and rows[2]["failures"] == 0 and rows[2]["timeouts"] == 1
    assert rows[2].get("local_acc_c2") is None and rows[2].get("local_acc_c1") is not None
    assert rows[2]["merged_acc"] is not None


def test_too_few_replies_keep_the_global_model(cfg, monkeypatch):
    import logging

    from fedssl.federation.supervised import initial_state

    class Records(logging.Handler):  # what Flower's logger emits, whatever the streams
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    flwr_log = logging.getLogger("flwr")
    seen = Records()
    flwr_log.addHandler(seen)
    cfg.name, cfg.federation.rounds, cfg.federation.min_replies = "few", 2, 2
    monkeypatch.setenv("FEDSSL_INJECT_FAULT", "0:raise:2")
    try:
        simulate(cfg)
    finally:
        flwr_log.removeHandler(seen)
    assert any("fraction_evaluate" in m for m in seen.messages)  # Flower's warnings get out ...
    assert not any("DEPRECATED FEATURE" in m for m in seen.messages)  # ... but not the banner
    # ... nor Ray's traceback of the client's exception: the server's one line says it
    assert not any("Traceback (most recent call last)" in m for m in seen.messages)
    rd = RunDir(cfg.run_dir())
    assert rd.metrics()[-1]["clients"] == 0 and rd.metrics()[-1]["failures"] == 1
    # round 2 merged nothing: the global model stays round 1's, and round 2 writes no weights
    assert rd.state()["checkpoint"].endswith("round_0001.safetensors")
    assert "injected failure" in rd.state()["failed_rounds"]["2"][0]
    saved = load_file(str(rd.path / rd.state()["checkpoint"]))
    init = initial_state(cfg)
    assert not all(torch.equal(saved[k], init[k]) for k in init)


def test_fault_specification_errors():
    from fedssl.config import ConfigError
    from fedssl.federation.client_work import inject_fault

    inject_fault(0, 1, "1:raise")  # another client: nothing happens
    with pytest.raises(RuntimeError, match="injected failure"):
        inject_fault(1, 3, "1:raise")
    inject_fault(1, 3, "1:raise:2")  # only in round 2
    with pytest.raises(ConfigError, match="cannot read 'x:boom'"):
        inject_fault(0, 1, "x:boom")
    inject_fault(0, 1, "0:exit:2")  # another round: this process lives on


def test_a_run_where_every_client_fails_stops_non_zero_naming_the_errors(
    load_launch, tiny_fashion, tmp_path, monkeypatch, capsys
):
    """Every client raises every round: the run stops after federation.max_failed_rounds
    rounds (not all six), exits 1 and says what the clients reported."""
    monkeypatch.setenv("FEDSSL_INJECT_FAULT", "0:raise,1:raise")
    sets = [
        f"data.root={tiny_fashion}",
        "data.train_per_client=150",
        "data.test_per_client=30",
        "model.width=4",
        "model.hidden=16",
        "train.local_steps=2",
        "federation.max_failed_rounds=2",
    ]
    argv = ["--out-dir", str(tmp_path), "--name", "allfail", "--rounds", "6", "--wandb",
            "disabled", "--set", *sets]  # fmt: skip
    assert load_launch("merge").main(argv) == 1
    err = capsys.readouterr().err
    assert "rounds 1-2" in err and "injected failure" in err
    rd = RunDir(tmp_path / "allfail")
    assert [r["round"] for r in rd.metrics()] == [0, 1, 2]
    assert "injected failure" in rd.state()["failed"]


def _tiny_merge(data_root, out, name: str, rounds: int) -> list[str]:
    """launch/merge.py's arguments for a few seconds of supervised rounds on the tiny data."""
    sets = [f"data.root={data_root}", "data.train_per_client=150", "data.test_per_client=30",
            "model.width=4", "model.hidden=16", "train.local_steps=2"]  # fmt: skip
    return ["--out-dir", str(out), "--name", name, "--rounds", str(rounds), "--wandb",
            "disabled", "--set", *sets]  # fmt: skip


def test_a_run_in_which_no_round_merged_exits_1_and_writes_no_model(
    load_launch, tiny_fashion, tmp_path, monkeypatch, capsys
):
    """One round, every client raises: exit 1, one error line naming the client's exception,
    no weights (not the untrained model as if it were trained), and the run directory says
    why."""
    monkeypatch.setenv("FEDSSL_INJECT_FAULT", "0:raise,1:raise")
    argv = _tiny_merge(tiny_fashion, tmp_path, "nothing", rounds=1)
    assert load_launch("merge").main(argv) == 1
    stderr = capsys.readouterr().err
    err = [ln for ln in stderr.splitlines() if ln.startswith("error")]
    assert "Traceback" not in stderr and len(err) == 1
    assert err[0].startswith("error: nothing: no round merged a usable reply")
    assert "RuntimeError: injected failure (FEDSSL_INJECT_FAULT) in round 1" in err[0]
    rd = RunDir(tmp_path / "nothing")
    assert not list(rd.path.rglob("*.safetensors"))
    assert rd.state().get("checkpoint") is None
    assert "injected failure" in rd.state()["failed"]


def test_a_run_past_a_failed_round_lists_it_at_the_end_and_in_its_state(
    load_launch, tiny_fashion, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("FEDSSL_INJECT_FAULT", "0:raise:2,1:raise:2")
    argv = _tiny_merge(tiny_fashion, tmp_path, "gap", rounds=3)
    assert load_launch("merge").main(argv) == 0
    out = capsys.readouterr().out
    assert "round 2/3" in out and "FAILED: no usable client reply" in out
    assert "1 round(s) merged no usable reply, the model unchanged: 2 (first: round 2" in out
    rd = RunDir(tmp_path / "gap")
    assert list(rd.state()["failed_rounds"]) == ["2"]
    assert rd.state()["checkpoint"].endswith("round_0003.safetensors")


def test_a_client_error_is_one_line_whichever_engine_carried_it():
    from fedssl.federation.strategy import reason_line

    deployed = "<class 'ValueError'>:<'client 0 has 180 unlabeled images, fewer than one batch'>"
    assert (
        reason_line(deployed)
        == "ValueError: client 0 has 180 unlabeled images, fewer than one batch"
    )
    simulated = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() "
        '(pid=1)\nTraceback (most recent call last):\n  File "x.py", line 3, in f\n'
        "ValueError: client 1 has 180 unlabeled images\n\nThe above exception was the direct "
        "cause of the following exception:\n\nflwr.clientapp.client_app.ClientAppException: "
        "\nException ClientAppException occurred. Message: client 1 has 180 unlabeled images'>"
    )
    assert reason_line(simulated) == "ValueError: client 1 has 180 unlabeled images"
    assert reason_line("timed out\nafter 3 s") == "after 3 s"


def test_clients_whose_process_dies_end_the_run_within_seconds(
    load_launch, tiny_fashion, tmp_path, monkeypatch, capsys
):
    """Every client's process dies (as when the system kills it for memory): the federation
    does not wait for them; the run ends with exit 1, naming Ray's ActorDiedError."""
    import time

    monkeypatch.setenv("FEDSSL_INJECT_FAULT", "0:exit,1:exit")
    argv = _tiny_merge(tiny_fashion, tmp_path, "died", rounds=1)
    t = time.perf_counter()
    assert load_launch("merge").main(argv) == 1
    assert time.perf_counter() - t < 120
    err = capsys.readouterr().err
    assert "no round merged a usable reply" in err and "ActorDiedError" in err
