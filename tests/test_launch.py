"""launch/merge.py and launch/pretrain.py: bad input gets a clear error and exit code 2, before
anything runs."""

import os
import re
from pathlib import Path

import pytest

from fedssl.runs import RunDir


@pytest.fixture(scope="module")
def launch(load_launch):
    return load_launch("merge")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "train.lrr=0.1"], "unknown config key 'train.lrr'"),
        (["--method", "mean"], "unknown merge method 'mean'"),
        (["--config", "nope.yaml"], "does not exist"),
        (["--resume", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_bad_input_exits_2_with_message(launch, argv, message, capsys):
    assert launch.main(argv) == 2
    assert message in capsys.readouterr().err


def test_env_and_flags_become_overrides(launch):
    args = launch.parse_args(
        ["--env", "h", "--rounds", "3", "--local-steps", "50", "--wandb", "disabled"]
    )
    assert launch.overrides(args) == [
        "federation.rounds=3",
        "train.local_steps=50",
        "tracking.wandb=disabled",
        "data.partition=label_split",
    ]


@pytest.fixture(scope="module")
def pretrain(load_launch):
    return load_launch("pretrain")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "ssl.temprature=0.1"], "unknown config key 'ssl.temprature'"),
        (["--config", "configs/merge/paper.yaml"], "launch/pretrain.py runs pretrain"),
        (["--set", "data.clients=[cifar]"], "unknown dataset 'cifar'"),
        (["--resume", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_pretrain_bad_input_exits_2_with_message(pretrain, argv, message, capsys):
    assert pretrain.main(argv) == 2
    assert message in capsys.readouterr().err


def test_pretrain_missing_data_says_where_and_how(pretrain, tmp_path, capsys):
    roots = [f"data.roots.flower102={tmp_path}/flowers", f"data.roots.intel_scene={tmp_path}/i"]
    on_cpu = ["runtime.accelerator=cpu", "federation.gpus_per_client=0",
              "federation.cpus_per_client=1", "runtime.workers=0"]  # fmt: skip
    argv = ["--config", "configs/pretrain/paper.yaml", "--set", *roots, *on_cpu]
    assert pretrain.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/flowers" in err and "imagelabels.mat" in err


# ------------------------------------------------------------------ refused before anything
def _snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "sets, message",
    [
        (["model.backbone=resnet9999"], "model.backbone: 'resnet9999' is neither a timm model"),
        (["model.backbone=sresnet18_w15"], "model.backbone: sresnet width must be even"),
        (["federation.cpus_per_client=4096"], "usable CPUs, so no client could start"),
        (["runtime.accelerator=cpu", "runtime.precision=16-mixed"], "16-mixed needs a GPU"),
        # SSL settings every client would fail on (they raised inside the clients, after Ray)
        (["ssl.travel=[backbone,queue]"], "ssl.travel: simclr has no part 'queue'"),
        (["ssl.client_views.cifar10.min_scale=0.5"], "ssl.client_views.cifar10: no client holds"),
        (["ssl.client_views.mnist.scale=0.5"], "unknown view setting scale"),
        (["ssl.client_views.mnist.rr_degrees=0"], "(client 1: mnist): rr_prob=0.5 needs rr_deg"),
        (["ssl.knn_bn_images=-5"], "ssl.knn_bn_images: -5 is not allowed; it must be >= 0"),
        (["ssl.knn_bn=mine"], "ssl.knn_bn: 'mine' is not allowed"),
        # a valid config: the finished run is not started over (data would be lost)
        ([], "already holds a run that completed round 1; continue it with --resume"),
    ],
)
def test_pretrain_refuses_before_ray_starts_and_leaves_the_run_untouched(
    pretrain, tmp_path, capsys, monkeypatch, sets, message
):
    import flwr.simulation

    run = tmp_path / "runs" / "pretrain-default"
    (run / "checkpoints").mkdir(parents=True)
    for name, text in {
        "metrics.csv": "round,knn_acc_mean\n1,0.5\n",
        "metrics.jsonl": '{"round": 1}\n',
        "state.json": '{"round": 1, "checkpoint": "checkpoints/round-1.safetensors"}',
        "config.yaml": "name: pretrain-default\n",
        "checkpoints/round-1.safetensors": "x",
    }.items():
        (run / name).write_text(text)
    before = _snapshot(tmp_path)

    def no_ray(*a, **k):
        raise AssertionError("the simulation started")

    monkeypatch.setattr(flwr.simulation, "run_simulation", no_ray)
    argv = ["--out-dir", str(tmp_path / "runs"), "--wandb", "disabled", "--set", *sets]
    assert pretrain.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------------- --print-config
@pytest.mark.parametrize(
    "launcher, argv",
    [
        ("pretrain", []),
        ("merge", ["--env", "h"]),
        ("noniid", []),
        ("finetune", ["--client", "mnist", "--backbone", "none", "--mode", "full"]),
        ("compare", []),
        ("crowdsource", ["--runtime", "accelerator=cpu"]),
    ],
)
def test_every_launcher_prints_its_resolved_config_and_runs_nothing(
    load_launch, launcher, argv, tmp_path, capsys, monkeypatch
):
    import yaml

    monkeypatch.chdir(tmp_path)  # anything written would land here
    out = ["--out-dir", str(tmp_path / "runs")]
    assert load_launch(launcher).main([*argv, *out, "--print-config"]) == 0
    text = capsys.readouterr().out
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs and all("runtime" in d for d in docs)
    assert {"accelerator", "precision", "channels_last", "workers"} <= set(docs[0]["runtime"])
    assert "# runtime on this machine" in text and "cpu" in text.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_hub_server_prints_its_settings(capsys, tmp_path, monkeypatch):
    import yaml

    from fedssl.hub.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--port", "0", "--db", "sqlite:///x.db", "--print-config"]) == 0
    settings = yaml.safe_load(capsys.readouterr().out)
    assert settings["port"] == 0 and settings["db"] == "sqlite:///x.db"
    assert list(tmp_path.iterdir()) == []  # no database, no server


def test_pretrain_overwrite_moves_the_earlier_run_aside(pretrain, tmp_path, monkeypatch):
    import flwr.simulation

    runs = tmp_path / "runs"
    (runs / "pretrain-default").mkdir(parents=True)
    (runs / "pretrain-default" / "state.json").write_text('{"round": 8}')
    started = []
    monkeypatch.setattr(flwr.simulation, "run_simulation", lambda **k: started.append(k))
    import fedssl.experiments.pretrain as stage_one

    monkeypatch.setattr(stage_one, "summary", lambda cfg: [])
    argv = ["--out-dir", str(runs), "--wandb", "disabled", "--overwrite"]
    assert pretrain.main(argv) == 0 and started
    (kept,) = runs.glob("pretrain-default.replaced-*")
    assert (kept / "state.json").read_text() == '{"round": 8}'


def test_an_engine_that_cannot_start_exits_1_in_seconds_naming_the_cause(tiny_pretrain, tmp_path):
    """Ray cannot start (its temporary folder cannot be made): the launcher used to print
    "Simulation Runtime crashed" and then hang (its server thread waited for replies for
    federation.timeout_s). Now: exit 1 within seconds, the cause in one line, and the run
    directory holds no round and continues with --resume once the engine starts."""
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "RAY_TMPDIR": str(blocker / "ray"), "WANDB_MODE": "disabled"}
    argv = [sys.executable, str(root / "launch" / "pretrain.py"), "--set",
            *tiny_pretrain(tmp_path / "runs", "engine")]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, cwd=root)
    took = time.perf_counter() - t
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert took < 90  # start-up and Ray's failure; before: killed at 150 s
    assert last.startswith("error: Flower's simulation engine (Ray) failed: NotADirectoryError")
    run = tmp_path / "runs" / "engine"
    assert str(run) in last and not (run / "checkpoints").exists()
    del env["RAY_TMPDIR"]
    proc = subprocess.run([*argv[:2], "--resume", str(run)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["round"] for r in RunDir(run).metrics()] == [1]


def test_a_batch_larger_than_a_clients_images_is_refused_before_anything_starts(
    pretrain, tiny_pretrain, tmp_path, capsys
):
    # every client would raise in every round: refused before anything starts instead
    assert pretrain.main(["--set", *tiny_pretrain(tmp_path, "big"), "train.batch_size=1000"]) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"train.batch_size: 1000 is more than client 0's \(fashion_mnist\) \d+ unl", err
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("launcher", ["noniid", "merge"])
def test_more_clients_than_the_data_can_serve_exit_2(launcher, load_launch, tmp_path, capsys):
    argv = ["--set", f"out_dir={tmp_path}", "data.num_clients=100000"]
    assert load_launch(launcher).main(argv) == 2
    err = capsys.readouterr().err
    assert "error: data: the clients cannot be split as configured: num_clients=100000" in err
    assert list(tmp_path.iterdir()) == []


def test_stage_one_whose_every_client_fails_in_training_exits_1_without_a_backbone(
    tiny_pretrain, tmp_path
):
    """Every client raises in training (forced here; a setting no check foresees does the
    same): exit 1 in one line naming the clients' error, no backbone.safetensors (the
    untrained backbone is not written as if trained), no "done", and state.json says why."""
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "WANDB_MODE": "disabled", "FEDSSL_INJECT_FAULT": "0:raise,1:raise"}
    argv = [sys.executable, str(root / "launch" / "pretrain.py"), "--set",
            *tiny_pretrain(tmp_path, "allfail")]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert time.perf_counter() - t < 120
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no round merged a usable reply (round 1)" in errors[0]
    assert "RuntimeError: injected failure (FEDSSL_INJECT_FAULT) in round 1" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "FAILED: no usable client reply" in proc.stdout and "done in" not in proc.stdout
    run = tmp_path / "allfail"
    assert not (run / "backbone.safetensors").exists() and not (run / "checkpoints").exists()
    assert "injected failure" in RunDir(run).state()["failed"]


def test_a_launch_checks_its_config_and_claims_its_run_directory_once(
    pretrain, tiny_pretrain, tmp_path, monkeypatch
):
    import fedssl.federation.preflight as checks
    import fedssl.federation.server_app as server_app
    import fedssl.federation.simulation as simulation
    import fedssl.runs as runs

    calls = []

    def counted(name, real):
        def call(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return call

    preflight = counted("preflight", checks.preflight)
    claim = counted("claim_run_dir", runs.claim_run_dir)
    for module in (checks, simulation):
        monkeypatch.setattr(module, "preflight", preflight)
    for module in (runs, server_app):
        monkeypatch.setattr(module, "claim_run_dir", claim)
    argv = ["--rounds", "1", "--set", *tiny_pretrain(tmp_path, "once")]
    assert pretrain.main(argv) == 0
    assert sorted(calls) == ["claim_run_dir", "preflight"]
    assert (tmp_path / "once" / "backbone.safetensors").is_file()
