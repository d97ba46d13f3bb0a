"""A deployed stage-one round against a simulated one, side by side in one sitting.

    python benchmarks/deploy.py                    # default job at 400 images per client (~6 min)
    python benchmarks/deploy.py --rounds 3 --out /tmp/deploy.md

The same config (``configs/pretrain/default.yaml`` with ``data.max_per_client=400``) three ways:

1. ``simulated``: ``python launch/pretrain.py`` (Flower's simulation engine, in one process
   tree);
2. ``deployed``: Flower's deployment engine on loopback as docs/how-to-deploy.md sets it up: a
   SuperLink serving TLS (a CA and certificate made here with ``openssl``) with SuperNode
   authentication (keys made with ``ssh-keygen``, registered with ``flwr supernode
   register``), two SuperNodes, ``flwr run``; each message is computed by the fresh
   ``flwr-clientapp`` process the SuperNode starts for it;
3. ``deployed, site workers``: the same, each SuperNode's ClientApp relaying to a site worker
   (``launch/site_worker.py``; node config ``worker=...``) that lives across rounds.

For each: seconds per round from round 2 (mean) and where the time went (the metrics'
breakdown), and each deployed way's round against the simulated one. It writes
``docs/results/deploy.md`` (``--out``) and its JSON, with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "pretrain" / "default.yaml"
PAGE = ROOT / "docs" / "results" / "deploy.md"
BIN = Path(sys.executable).parent
WAYS = ("simulated", "deployed", "deployed, site workers", "deployed, site workers, short polls")
TARGET = 1.5  # a deployed round <= this many times the simulated one
PARTS = ("steps", "data", "other", "eval", "engine", "server")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5, help="rounds per run (means from round 2)")
    p.add_argument(
        "--set",
        nargs="*",
        default=["data.max_per_client=400"],
        metavar="KEY=VALUE",
        help="config overrides (default: %(default)s)",
    )
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    p.add_argument("--out", default=str(PAGE), help="results page (default: %(default)s)")
    p.add_argument("--render", metavar="JSON", help="only write the page from this JSON")
    a = p.parse_args(argv)
    if a.rounds < 2:
        p.error("--rounds must be at least 2 (the means start at round 2)")
    return a


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(text: str, log: Path, timeout: float, count: int = 1) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and log.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{text!r} not in {log} after {timeout}s:\n{log.read_text()[-1500:]}")


def _run(cmd: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}):\n{tail}")
    return proc


def _certificates(d: Path, env: dict) -> None:
    """A CA, and a certificate for 127.0.0.1 signed by it (docs/how-to-deploy.md, step 2)."""
    ssl = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-sha256"]
    _run([*ssl, "-x509", "-days", "2", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
          "-subj", "/CN=fedssl-bench-ca"], env)  # fmt: skip
    _run([*ssl, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"),
          "-subj", "/CN=localhost"], env)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _run(["openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"),
          "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "server.pem"),
          "-days", "2", "-sha256", "-extfile", str(d / "san.ext")], env)  # fmt: skip


def _start(cmd: list[str], log: Path, env: dict, procs: list) -> None:
    procs.append(
        subprocess.Popen(
            cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    )


def _stop(procs: list) -> None:
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


def _overrides(a, name: str, out: Path) -> list[str]:
    return [*a.set, f"out_dir={out}", f"name={name}", "tracking.wandb=disabled",
            f"federation.rounds={a.rounds}"]  # fmt: skip


def simulated(a, out: Path) -> tuple[Path, str]:
    sets = _overrides(a, "simulated", out)
    cmd = [sys.executable, str(ROOT / "launch" / "pretrain.py"), "--set", *sets]
    _run(cmd, dict(os.environ), cwd=ROOT)
    return out / "simulated", "python launch/pretrain.py --set " + " ".join(sets)


def deployed(a, out: Path, workers: bool, short_polls: bool = False) -> tuple[Path, str]:
    name = "deployed-workers" if workers else "deployed"
    name += "-short" if short_polls else ""
    d = Path(tempfile.mkdtemp(prefix="fdep"))  # short: Unix sockets' paths live here
    home = d / "flwr"
    home.mkdir()
    env = dict(os.environ, FLWR_HOME=str(home), WANDB_MODE="disabled")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    _certificates(d, env)
    port = _free_port()  # one HTTPS port: fleet, control and runtime APIs (Flower 1.42)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{d / "ca.crt"}"\n'
    )
    procs: list = []
    try:
        _start([str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(d / "ca.crt"),
                "--ssl-certfile", str(d / "server.pem"), "--ssl-keyfile", str(d / "server.key"),
                "--enable-supernode-auth", "--database", str(d / "link.db"),
                "--host", "127.0.0.1", "--port", str(port)],
               d / "superlink.log", env, procs)  # fmt: skip
        _wait_for("Uvicorn running", d / "superlink.log", 60)
        for pid in (0, 1):
            key = d / f"site{pid}_key"
            _run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)], env)
            _run([str(BIN / "flwr"), "supernode", "register", f"{key}.pub", "bench"], env)
            node_config = f"partition-id={pid}"
            if workers:
                sock = d / f"site{pid}.sock"
                _start([sys.executable, str(ROOT / "launch" / "site_worker.py"),
                        "--socket", str(sock)], d / f"worker{pid}.log", env, procs)  # fmt: skip
                _wait_for("site worker on", d / f"worker{pid}.log", 60)
                node_config += f" worker='{sock}'"
            supernode = [str(BIN / "flower-supernode")]
            if short_polls:  # Flower's SuperNode with its waits capped (launch/supernode.py)
                supernode = [sys.executable, str(ROOT / "launch" / "supernode.py"), "--"]
            _start([*supernode, "--superlink", f"127.0.0.1:{port}",
                    "--root-certificates", str(d / "ca.crt"),
                    "--auth-supernode-private-key", str(key), "--port", str(_free_port()),
                    "--node-config", node_config],
                   d / f"supernode{pid}.log", env, procs)  # fmt: skip
        _wait_for("Activated", d / "superlink.log", 60, count=2)
        overrides = " ".join(_overrides(a, name, out))
        cmd = [str(BIN / "flwr"), "run", str(ROOT), "bench", "--stream",
               "--run-config", f'config="{DEFAULT}" overrides="{overrides}"']  # fmt: skip
        _run(cmd, env, timeout=1800)
        from fedssl.runs import RunDir

        rd = RunDir(out / name)
        deadline = time.time() + 120
        while time.time() < deadline and (rd.state() or {}).get("round") != a.rounds:
            time.sleep(0.5)
    finally:
        _stop(procs)
        if not os.environ.get("FEDSSL_KEEP_DEPLOY"):
            shutil.rmtree(d, ignore_errors=True)
    how = "SuperLink (TLS, SuperNode authentication) + 2 SuperNodes"
    if workers:
        how += " with `python launch/site_worker.py --socket S` each (node config `worker='S'`)"
    if short_polls:
        how += ", each SuperNode started by `python launch/supernode.py --poll-s 0.1 -- ...`"
    return out / name, f"{how}; `flwr run . <federation> --run-config 'overrides=\"{overrides}\"'`"


def summarise(run: Path) -> dict:
    from fedssl.experiments.pretrain import time_breakdown
    from fedssl.runs import RunDir

    rows = [r for r in RunDir(run).metrics() if r.get("round", 0) >= 1]
    clients = sum(1 for k in rows[0] if k.startswith("train_s_c"))
    later = [r for r in rows if r["round"] >= 2]
    if not later:
        raise RuntimeError(f"{run} has no rounds after the first: {len(rows)} rows")
    return {
        "rounds": len(rows),
        "first_round_s": float(rows[0]["round_s"]),
        "round_s": [float(r["round_s"]) for r in rows],
        "mean_s": sum(float(r["round_s"]) for r in later) / len(later),
        "breakdown": time_breakdown(later, clients),
    }


def measure(a) -> dict:
    res = {**harness.stamp("deploy.py"), "rounds": a.rounds, "overrides": a.set, "ways": {}}
    with tempfile.TemporaryDirectory(prefix="fedssl-deploy-") as tmp:
        for way in a.ways:
            print(f"[deploy] {way}, {a.rounds} rounds ...", flush=True)
            t = time.perf_counter()
            if way == "simulated":
                run, how = simulated(a, Path(tmp))
            else:
                run, how = deployed(
                    a, Path(tmp), workers="workers" in way, short_polls="short" in way
                )
            r = {**summarise(run), "how": how, "wall_s": time.perf_counter() - t}
            res["ways"][way] = r
            print(f"[deploy] {way}: {r['mean_s']:.2f} s/round from round 2", flush=True)
    return res


def _f(x, fmt=".2f"):
    return "—" if x is None else f"{x:{fmt}}"


def render(res: dict) -> str:
    ways = res["ways"]
    sim = ways.get("simulated", {}).get("mean_s")
    lines = [
        "# A deployed round against a simulated one",
        "",
        f"`{res['command']}` ({res['date']}; {res['machine']}; load {res['load_at_start']} at "
        f"the start, {res.get('load_at_end')} at the end). The default stage-one config with "
        f"{'`' + ' '.join(res['overrides']) + '`' if res['overrides'] else 'no overrides'}, "
        f"{res['rounds']} rounds each way, one way after the "
        "other; seconds per round are means from round 2. Target: a deployed round at most "
        f"{TARGET}x the simulated one.",
        "",
        "| way | s per round | x simulated | target | first round s | " + " | ".join(PARTS) + " |",
        "|---|---|---|---|---|" + "---|" * len(PARTS),
    ]
    for way, r in ways.items():
        ratio = r["mean_s"] / sim if sim else None
        met = "—" if way == "simulated" or ratio is None else (
            f"{'met' if ratio <= TARGET else 'not met'} ({TARGET}x)"
        )  # fmt: skip
        b = r["breakdown"]
        lines.append(
            f"| {way} | {r['mean_s']:.2f} | {_f(ratio)} | {met} | {r['first_round_s']:.1f} | "
            + " | ".join(_f(b.get(p)) for p in PARTS)
            + " |"
        )
    lines += [
        "",
        "*steps*, *data*, *other*, *eval*: the slowest client's training steps, images and "
        "batches, module and Trainer, kNN monitor; *engine*: the rest of the round outside the "
        "server (Flower's messaging and, deployed, each message's process: start, imports, "
        "data); *server*: merge, checkpoint, plot. A SuperNode starts a fresh `flwr-clientapp` "
        "process for every message (Flower 1.42, either isolation mode); with a site worker "
        "that process only relays the message to fedssl's long-lived process at the site "
        '(docs/how-to-deploy.md, "A worker per site"). Flower\'s SuperNode waits a fixed 3 s '
        "between its looks for a message and its SuperExec 1 s between its looks for a task; "
        "*short polls* runs the same SuperNode through `launch/supernode.py`, which caps those "
        "waits at 0.1 s. What is left beyond the simulated round is Flower's process per "
        "message (about 1 s to start and import Flower) and the messages' transfers; "
        "docs/how-to-deploy.md has the timeline of one message.",
        "",
        "How each way ran:",
        "",
    ]
    lines += [f"- {way}: {r['how']} (wall {r['wall_s']:.0f} s)" for way, r in ways.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.render:  # the page again from its JSON (e.g. after a change to the text)
        res = json.loads(Path(a.render).read_text())
        print(f"[deploy] wrote {harness.write_results(a.out, res, render, a.render)}")
        return 0
    os.environ.setdefault("WANDB_MODE", "disabled")
    res = measure(a)
    page = harness.write_results(a.out, res, render)
    print(f"[deploy] wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
