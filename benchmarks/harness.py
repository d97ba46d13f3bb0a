"""What every benchmark suite shares: a description of the machine and of its load (these
machines are noisy: a page says how busy the machine was while it measured), timers that compare
side by side, and the atomic writing of a results page with its JSON.

Suites import it as ``import harness`` (``python benchmarks/<suite>.py`` puts this folder on the
path)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "cpu_model",
    "machine",
    "load",
    "stamp",
    "best_time",
    "median_time",
    "interleaved",
    "write_results",
]


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name as the kernel reports it (``/proc/cpuinfo``), else the platform's
    processor string, else ``""``. Two machines of the same kind here can differ several-fold in
    speed, so a page that reports minutes names the CPU it measured on."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor()


def machine() -> str:
    """``"<n> CPUs (<model>), <arch>, <GPU name | no GPU>, Python <x.y.z>"``."""
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = cpu_model()
    model = f" ({model})" if model else ""
    return f"{cpus} CPUs{model}, {platform.machine()}, {gpu}, Python {platform.python_version()}"


def load() -> list[float]:
    """The 1/5/15-minute load averages (how busy the machine is), rounded."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def stamp(script: str, argv: list[str] | None = None) -> dict:
    """The head of every results JSON: the command that measured it, date, machine, load."""
    given = argv if argv is not None else sys.argv[1:]
    return {
        "command": f"python benchmarks/{script} {shlex.join(given)}".rstrip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "load_at_start": load(),
    }


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls, in seconds (for short, CPU-bound kernels)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """The median of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turns (one call of each per pass), so that a
    busy spell of the machine weighs on all of them alike: compare these as ratios."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def run_python(cmd: list[str], label: str) -> float:
    """Run ``cmd`` (``["python", script, args...]``) with this interpreter in the project
    root; returns its wall seconds.

    Raises:
        RuntimeError: it failed; the message holds ``label`` and its output's last 20 lines.
    """
    import subprocess

    root = Path(__file__).resolve().parents[1]
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd[1:]], cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise RuntimeError(f"{label}: {cmd[1]} exited {proc.returncode}\n{tail}")
    return wall


def _atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(
    page: str | Path,
    res: dict,
    render: Callable[[dict], str],
    json_path: str | Path | None = None,
) -> Path:
    """Record the load at the end in ``res`` (unless it holds one already: a page re-rendered
    from its JSON keeps the load of the run that measured it), then write the JSON
    (``json_path``, default ``<page>.json``) and the page (``render(res)``), each atomically.
    Returns the page's path."""
    page = Path(page)
    res.setdefault("load_at_end", load())
    _atomic(Path(json_path or page.with_suffix(".json")), json.dumps(res, indent=1) + "\n")
    _atomic(page, render(res))
    return page
