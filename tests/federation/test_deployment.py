"""Stage one under Flower's deployment engine: a real SuperLink and two SuperNodes on 127.0.0.1
(insecure mode), the project submitted with `flwr run`, one round of SimCLR with a tiny backbone.
Each SuperNode names its partition and its own data folder in its node config; site 1's
ClientApp relays its messages to a site worker (launch/site_worker.py) and its SuperNode runs
with short polls (launch/supernode.py), site 0's is Flower's own and computes its messages
itself, so both paths run."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedssl.models.backbones import load_backbone
from fedssl.runs import RunDir

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: the SuperExec children go with it
    )


def wait_for(text: str, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in {log}:\n{log.read_text(errors='replace')[-2000:]}")


def test_superlink_two_supernodes_flwr_run(tiny_fashion, tiny_pretrain, tmp_path):
    home, out = tmp_path / "flwr_home", tmp_path / "runs"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = dict(os.environ, FLWR_HOME=str(home), WANDB_MODE="disabled")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    procs = []
    try:
        link_log = tmp_path / "superlink.log"
        procs.append(
            start(
                [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                 "--port", str(port), "--database", str(tmp_path / "link.db")],
                link_log,
                env,
            )
        )  # fmt: skip
        wait_for("Uvicorn running", link_log, 60)
        sock = Path(tempfile.mkdtemp(prefix="fw")) / "site1.sock"  # short: a socket's path limit
        worker_log = tmp_path / "worker1.log"
        procs.append(
            start([sys.executable, str(ROOT / "launch" / "site_worker.py"), "--socket", str(sock)],
                  worker_log, env)
        )  # fmt: skip
        wait_for("site worker on", worker_log, 60)
        for pid in (0, 1):
            log = tmp_path / f"supernode{pid}.log"
            node_config = f"partition-id={pid} data-root='{tiny_fashion}'"
            if pid == 1:
                node_config += f" worker='{sock}'"
            # site 0: Flower's own SuperNode; site 1: the same through launch/supernode.py
            supernode = [str(BIN / "flower-supernode")]
            if pid == 1:
                supernode = [sys.executable, str(ROOT / "launch" / "supernode.py"), "--"]
            procs.append(
                start(
                    [*supernode, "--insecure",
                     "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                     "--node-config", node_config],
                    log,
                    env,
                )
            )  # fmt: skip
        wait_for("Activated node_id", link_log, 60)
        overrides = " ".join(tiny_pretrain(out, "deployed"))
        config = ROOT / "configs" / "pretrain" / "default.yaml"
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(ROOT), "deploy", "--stream",
             "--run-config", f'config="{config}" overrides="{overrides}"'],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )  # fmt: skip
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-3000:]
        rd = RunDir(out / "deployed")
        deadline = time.time() + 60
        while time.time() < deadline and rd.state().get("round") != 1:
            time.sleep(1)
        rows = rd.metrics()
        assert [r["round"] for r in rows] == [1], log[-3000:]
        assert rows[0]["clients"] == 2 and rows[0]["failures"] == 0
        assert 0.0 <= rows[0]["knn_acc_c0"] <= 1.0 and 0.0 <= rows[0]["knn_acc_c1"] <= 1.0
        # the per-round time breakdown comes through the deployment engine too, from both paths
        for col in ("train_s_c0", "train_s_c1", "data_s_c1", "other_s_c1", "engine_s", "server_s"):
            assert float(rows[0][col]) >= 0.0, col
        assert float(rows[0]["train_s_c1"]) > 0.0
        # site 1's work was done by its worker: the relay answered train (and kNN) messages
        wlog = worker_log.read_text()
        assert "train round 1, partition 1" in wlog and "ok" in wlog, wlog[-2000:]
        slog = (tmp_path / "supernode1.log").read_text(errors="replace")
        assert "SuperNode polls capped at 0.1 s" in slog, slog[-2000:]
        _, meta = load_backbone(rd.path / "backbone.safetensors")
        assert meta["backbone"] == "test_resnet"
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
