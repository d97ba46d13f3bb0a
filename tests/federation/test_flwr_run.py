"""`flwr run .` runs the project's registered ServerApp/ClientApp (pyproject [tool.flwr.app])
through Flower's own CLI and a managed local SuperLink, on tiny idx data."""

import os
import subprocess
import sys
import time
from pathlib import Path

from fedssl.runs import RunDir

ROOT = Path(__file__).resolve().parents[2]


def test_flwr_run_dot(tiny_fashion, tmp_path):
    out = tmp_path / "runs"
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr_home"), WANDB_MODE="disabled")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
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
    flwr = str(Path(sys.executable).parent / "flwr")
    try:
        proc = subprocess.run(
            [flwr, "run", str(ROOT), "--run-config", f'overrides="{overrides}"', "--stream"],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        deadline = time.time() + 60
        rd = RunDir(out / "flwr-run")
        while time.time() < deadline and rd.state().get("round") != 1:
            time.sleep(1)
        assert rd.state().get("round") == 1, log[-3000:]
        rows = rd.metrics()
        assert [r["round"] for r in rows] == [0, 1] and rows[1]["clients"] == 2
    finally:  # the managed SuperLink is detached: stop the one this test started
        subprocess.run(["pkill", "-f", str(tmp_path / "flwr_home" / "local-superlink")])
