"""`flwr run .` runs the project's registered ServerApp/ClientApp (pyproject [tool.flwr.app])
through Flower's own CLI and a managed local SuperLink, on tiny idx data: the merge experiment
and stage one (the launchers' main job, which they run through run_simulation's adapter)."""

import os
import subprocess
import sys
import time
from pathlib import Path

from fedssl.runs import RunDir

ROOT = Path(__file__).resolve().parents[2]


def _flwr_run(tmp_path, run_config: str):
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr_home"), WANDB_MODE="disabled")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    flwr = str(Path(sys.executable).parent / "flwr")
    return subprocess.run(
        [flwr, "run", str(ROOT), "--run-config", run_config, "--stream"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def _wait_for_round(rd: RunDir, rnd: int, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and rd.state().get("round") != rnd:
        time.sleep(1)


def test_flwr_run_dot(tiny_fashion, tmp_path):
    out = tmp_path / "runs"
    overrides = " ".join(
        [
            f"data.root={tiny_fashion}",
            f"out_dir={out}",
            "name=flwr-run",
            "data.train_per_client=300",
            "data.test_per_client=50",
            "model.width=4",
            "model.hidden=16",
            "train.local_steps=5",
            "federation.rounds=1",
            "tracking.wandb=disabled",
        ]
    )
    try:
        proc = _flwr_run(tmp_path, f'overrides="{overrides}"')
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        rd = RunDir(out / "flwr-run")
        _wait_for_round(rd, 1)
        assert rd.state().get("round") == 1, log[-3000:]
        rows = rd.metrics()
        assert [r["round"] for r in rows] == [0, 1] and rows[1]["clients"] == 2
    finally:  # the managed SuperLink is detached: stop the one this test started
        subprocess.run(["pkill", "-f", str(tmp_path / "flwr_home" / "local-superlink")])


def test_flwr_run_dot_runs_stage_one(tiny_pretrain, tmp_path):
    """The launchers' main job (pretrain, as launch/pretrain.py runs it through the simulation
    adapter) also runs under `flwr run .`, so dropping run_simulation only changes the adapter."""
    out = tmp_path / "runs"
    overrides = " ".join(tiny_pretrain(out, "flwr-pretrain"))
    try:
        proc = _flwr_run(
            tmp_path, f'config="configs/pretrain/default.yaml" overrides="{overrides}"'
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        rd = RunDir(out / "flwr-pretrain")
        _wait_for_round(rd, 1)
        assert rd.state().get("round") == 1, log[-3000:]
        row = rd.metrics()[-1]
        assert row["clients"] == 2 and row["knn_acc_mean"] is not None
        assert (rd.path / "backbone.safetensors").is_file()
    finally:
        subprocess.run(["pkill", "-f", str(tmp_path / "flwr_home" / "local-superlink")])
