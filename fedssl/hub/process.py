"""Run the hub as a separate server process (for experiments, benchmarks and restart tests)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

__all__ = ["start_server_process", "stop_server_process"]

LAUNCHER = Path(__file__).resolve().parents[2] / "launch" / "hub_server.py"


def start_server_process(
    db: str, workdir: str | Path, manager: str = "manager", timeout: float = 60.0, tag: str = ""
) -> tuple[subprocess.Popen, str, str]:
    """Start ``launch/hub_server.py`` on 127.0.0.1 (a free port) over the store ``db``.

    Returns ``(process, "127.0.0.1:port", manager_key)``. The manager key is made on the first
    start of a store and kept in ``workdir/manager.key`` (later starts reuse that file). The
    server's output goes to ``workdir/hub_server<tag>.log``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port_file, key_file = workdir / f"hub{tag}.port", workdir / "manager.key"
    port_file.unlink(missing_ok=True)
    log_path = workdir / f"hub_server{tag}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--db", db, "--port", "0", "--init-manager", manager,
             "--key-file", str(key_file), "--port-file", str(port_file)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    t = time.time()
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None:
            raise RuntimeError(f"the hub server exited ({proc.returncode}); see {log_path}")
        if time.time() - t > timeout:
            proc.kill()
            raise TimeoutError(f"the hub server did not start in {timeout:.0f} s; see {log_path}")
        time.sleep(0.1)
    if not key_file.exists():
        proc.kill()
        raise RuntimeError(f"{db} already has a manager key for {manager!r} but {key_file} is gone")
    return proc, f"127.0.0.1:{int(port_file.read_text())}", key_file.read_text().strip()


def stop_server_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (graceful stop), then SIGKILL if it does not exit in ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
