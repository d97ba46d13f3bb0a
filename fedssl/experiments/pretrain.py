"""Stage one as ``launch/pretrain.py`` runs it: every client's data checked up front, the
federated run on Flower (simulation), and the end-of-run report of the backbone's kNN accuracy."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedssl.config import ConfigError, ExperimentConfig

__all__ = ["KnnTrack", "check_data", "knn_tracks", "time_breakdown", "time_line", "summary", "run"]

LAST_ROUNDS = 10  # the end-of-run report's window: one round's kNN swings by about a point


@dataclass(frozen=True)
class KnnTrack:
    """One client's kNN accuracy over a stage-one run's evaluated rounds, with its baselines
    (``None`` where the run did not record them)."""

    rounds: tuple[int, ...]
    acc: tuple[float, ...]
    pixels: float | None = None
    init: float | None = None
    seconds: tuple[tuple[int, float], ...] = ()  # (round, wall s) of every round, scored or not

    @property
    def final(self) -> float:
        return self.acc[-1]

    def last(self, n: int = LAST_ROUNDS) -> tuple[float, float, float, int]:
        """Mean, lowest and highest accuracy of the last ``n`` evaluated rounds, and how many
        there were (fewer than ``n`` in a short run)."""
        window = self.acc[-n:]
        return sum(window) / len(window), min(window), max(window), len(window)

    def best(self) -> tuple[float, int]:
        """The highest accuracy and its (first) round."""
        i = max(range(len(self.acc)), key=lambda j: (self.acc[j], -j))
        return self.acc[i], self.rounds[i]

    def first_at_least(self, level: float) -> int | None:
        """The first evaluated round whose accuracy is at or above ``level``."""
        return next((r for r, a in zip(self.rounds, self.acc, strict=True) if a >= level), None)

    def at(self, rnd: int) -> float | None:
        """The accuracy after round ``rnd`` (``None``: not evaluated then)."""
        return dict(zip(self.rounds, self.acc, strict=True)).get(rnd)

    def minutes(self, until: int | None = None) -> float:
        """Wall minutes of rounds 1..``until`` (all), from the metrics' ``round_s``."""
        return sum(s for r, s in self.seconds if until is None or r <= until) / 60


def knn_tracks(rows: Sequence[Mapping[str, Any]], clients: int) -> dict[int, KnnTrack]:
    """Each client's :class:`KnnTrack` from a run's metrics rows (``RunDir.metrics()``):
    rounds without a kNN score (``federation.eval_every``) are skipped; a client never scored
    is left out."""
    rows = sorted(rows, key=lambda r: r["round"])
    seconds = tuple((r["round"], float(r.get("round_s") or 0.0)) for r in rows)

    def once(key: str) -> float | None:  # a baseline: the round that recorded it
        return next((r[key] for r in rows if r.get(key) is not None), None)

    out = {}
    for pid in range(clients):
        c = f"c{pid}"
        scored = [r for r in rows if r.get(f"knn_acc_{c}") is not None]
        if not scored:
            continue
        out[pid] = KnnTrack(
            rounds=tuple(r["round"] for r in scored),
            acc=tuple(float(r[f"knn_acc_{c}"]) for r in scored),
            pixels=once(f"knn_pixels_{c}"),
            init=once(f"knn_init_{c}"),
            seconds=seconds,
        )
    return out


def time_breakdown(rows: Sequence[Mapping[str, Any]], clients: int) -> dict[str, float]:
    """Where a run's rounds spent their time, in mean seconds per round over rounds 2 on (round
    one decodes the cache and scores the baselines; all rounds when there is only one):
    ``round`` (wall), ``steps`` (the slowest client's training steps, views included),
    ``data`` and ``other`` (that client's time outside its steps: images and batches; module,
    state, Trainer), ``eval`` (the slowest client's kNN monitor, averaged over every round,
    scored or not), ``engine`` (Flower / Ray: messages, process scheduling) and ``server``
    (merge, checkpoints, plots); ``rounds``: how many rounds the means are over. Empty when
    the rows carry no breakdown."""
    rows = [r for r in rows if r.get("round", 0) >= 1 and r.get("round_s") is not None]
    later = [r for r in rows if r["round"] >= 2] or rows
    if not later or all(r.get("engine_s") is None for r in later):
        return {}

    def slowest(r, col):
        vals = [r.get(f"{col}_c{c}") for c in range(clients)]
        vals = [float(v) for v in vals if v is not None]
        return max(vals) if vals else 0.0

    def mean(fn):
        return sum(fn(r) for r in later) / len(later)

    def part(col):  # of the client whose train message took longest
        def busiest(r):
            return max(range(clients), key=lambda c: float(r.get(f"work_s_c{c}") or 0.0))

        return lambda r: float(r.get(f"{col}_c{busiest(r)}") or 0.0)

    return {
        "round": mean(lambda r: float(r["round_s"])),
        "steps": mean(part("train_s")),
        "data": mean(part("data_s")),
        "other": mean(part("other_s")),
        "eval": mean(lambda r: slowest(r, "eval_s")),
        "engine": mean(lambda r: float(r.get("engine_s") or 0.0)),
        "server": mean(lambda r: float(r.get("server_s") or 0.0)),
        "rounds": float(len(later)),
        "from": float(later[0]["round"]),
    }


def time_line(b: Mapping[str, float]) -> str:
    """One line of :func:`time_breakdown`: seconds per round and shares of the round."""
    if not b:
        return "[fedssl] time per round: no breakdown in the metrics"
    r = b["round"] or 1.0
    parts = [f"{k} {b[k]:.2f}s ({100 * b[k] / r:.0f}%)" for k in
             ("steps", "data", "other", "eval", "engine", "server")]  # fmt: skip
    return (f"[fedssl] time per round (mean of {b['rounds']:.0f} from round {b['from']:.0f}): "
            f"{b['round']:.2f}s = " + ", ".join(parts))  # fmt: skip


def data_path_line(cfg: ExperimentConfig, rt=None) -> str:
    """Where stage one's views are made and where each client's images are kept, in one line
    (what ``ssl.views`` and ``data.cache`` resolve to on this machine)."""
    from fedssl import runtime
    from fedssl.methods.views import views_mode

    views, mode = views_mode(cfg), cfg.data.cache
    src = f"ssl.views={cfg.ssl.views}" if cfg.ssl.views != views else "ssl.views"
    line = f"[fedssl] data path: {views} views ({src})"
    if views != "batched" or mode == "off":
        why = "data.cache=off" if mode == "off" else "lightly's views need PIL images"
        return line + f"; images loaded per batch by a DataLoader ({why})"
    rt = rt or runtime.resolve(cfg)
    if rt.device.type != "cuda" or mode == "host":
        where = "host memory" + (" (the training device is the CPU)" if mode == "auto" else "")
        if rt.device.type == "cuda":
            where = "pinned host memory (data.cache=host)"
    elif mode == "device":
        where = f"{rt.device} (data.cache=device)"
    else:
        share = cfg.data.cache_gpu_share
        where = (
            f"{rt.device} where a client's images fit data.cache_gpu_share={share:g} of its "
            "free memory, else pinned host memory"
        )
    return line + f"; each client's images decoded once per process, kept in {where}"


def cache_line(rows: list[Mapping], clients: int) -> str:
    """Where the last round's images were: each client's cache size and place (``cache_mib``,
    ``cache_on_device``); empty without the cache."""
    parts = []
    for c in range(clients):
        row = next((r for r in reversed(rows) if r.get(f"cache_mib_c{c}") is not None), None)
        if row is None:
            continue
        where = "on the GPU" if float(row[f"cache_on_device_c{c}"] or 0) else "in host memory"
        parts.append(f"client {c} {float(row[f'cache_mib_c{c}']):.1f} MiB {where}")
    return "[fedssl] image cache: " + ", ".join(parts) if parts else ""


def check_data(cfg: ExperimentConfig) -> list[str]:
    """Load every client's split up front (the simulation runs all clients on this machine), so
    missing data fails here with the dataset's own how-to-get-it message, and settings the data
    cannot serve (a batch larger than a client's unlabeled images) fail before anything starts.
    Returns summary lines.

    Raises:
        ConfigError: ``train.batch_size`` more than a client's unlabeled images.
    """
    from fedssl.data.client_images import client_task

    lines = []
    for pid, name in enumerate(cfg.data.clients):
        t = client_task(cfg.data, pid)
        if len(t.unlabeled) < cfg.train.batch_size:
            raise ConfigError(
                f"train.batch_size: {cfg.train.batch_size} is more than client {pid}'s "
                f"({name}) {len(t.unlabeled)} unlabeled images; lower it, or raise "
                "data.max_per_client"
            )
        lines.append(
            f"  client {pid}: {name} ({t.train.source}) {len(t.unlabeled)} unlabeled for "
            f"{cfg.ssl.method}, {len(t.labeled)} labeled (kNN bank), {len(t.test)} test, "
            f"{t.num_classes} classes"
        )
    return lines


def summary(cfg: ExperimentConfig) -> list[str]:
    """The backbone's final kNN accuracy per client against its baselines, from the run's
    metrics: raw pixels first (the baseline that can beat it), then random init; then the mean
    and range of the last :data:`LAST_ROUNDS` evaluated rounds, a steadier figure than one
    round's (which moves by about a point from round to round)."""
    from fedssl.runs import RunDir

    tracks = knn_tracks(RunDir(cfg.run_dir()).metrics(), len(cfg.data.clients))
    if not tracks:
        return ["[fedssl] no evaluated round in the metrics"]
    last_round = max(t.rounds[-1] for t in tracks.values())
    stats = ", each client's own BatchNorm statistics" if cfg.ssl.knn_bn == "client" else ""
    out = [f"[fedssl] kNN accuracy of the backbone (round {last_round}{stats}) against raw "
           "pixels (same bank, queries, k and temperature) and random init:"]  # fmt: skip
    for pid, name in enumerate(cfg.data.clients):
        t = tracks.get(pid)
        if t is None:
            continue
        parts = []
        if t.pixels is not None:
            verdict = "above" if t.final > t.pixels else "NOT above"
            parts.append(f"raw pixels {t.pixels:.4f}: {t.final - t.pixels:+.4f}, {verdict}")
        if t.init is not None:
            parts.append(f"random init {t.init:.4f}")
        when = "" if t.rounds[-1] == last_round else f" at round {t.rounds[-1]}"  # e.g. it failed
        line = f"  client {pid} {name}: {t.final:.4f}{when}" + (
            f" ({'; '.join(parts)})" if parts else ""
        )
        mean, lo, hi, n = t.last()
        if n > 1:
            line += f"; last {n} evaluated rounds {mean:.4f} ({lo:.4f}-{hi:.4f})"
        out.append(line)
    return out


def run(
    cfg: ExperimentConfig,
    data_lines: list[str],
    resume: bool = False,
    verbose: bool = False,
    backend: dict | None = None,
):
    """The federated stage one of ``cfg``, with progress and the final report. ``data_lines``:
    :func:`check_data`'s; ``backend``: preflight's, where the caller checked ``cfg`` and claimed
    its run directory (:func:`fedssl.federation.simulation.simulate`).

    Raises:
        FederationFailed: the federation could not go on.
    """
    from fedssl.cli import runtime_line
    from fedssl.federation.simulation import simulate
    from fedssl.tracking import resolve_mode

    f, m, t = cfg.federation, cfg.model, cfg.train
    local = f"{t.local_steps} steps" if t.local_steps else f"{t.local_epochs} epoch(s)"
    method = cfg.ssl.method + (
        "" if cfg.ssl.client_update == "none" else f"+{cfg.ssl.client_update}"
    )
    print(
        f"[fedssl] stage one: {method} on {m.backbone} ({m.image_size}px) x "
        f"{len(cfg.data.clients)} clients, FedAvg, {f.rounds} rounds of {local}; "
        f"W&B {resolve_mode(cfg.tracking.wandb)}; "
        f"run dir {cfg.run_dir()}",
        flush=True,
    )
    print("\n".join(data_lines), flush=True)
    print(runtime_line(cfg, comment=False), flush=True)
    print(data_path_line(cfg), flush=True)
    t0 = time.perf_counter()
    simulate(cfg, resume=resume, verbose=verbose, backend=backend)
    rd = cfg.run_dir()
    print("\n".join(summary(cfg)))
    from fedssl.runs import RunDir

    rows, n = RunDir(rd).metrics(), len(cfg.data.clients)
    print(time_line(time_breakdown(rows, n)))
    if line := cache_line(rows, n):
        print(line)
    print(f"[fedssl] done in {time.perf_counter() - t0:.0f}s")
    print(f"[fedssl] backbone:   {rd / 'backbone.safetensors'} (config: {rd / 'config.yaml'})")
    if cfg.ssl.local_layers:  # the file is the shared part; a head needs its client's layers
        first = (cfg.data.clients or [0])[0]
        print(
            f"[fedssl] each client kept its own {', '.join(cfg.ssl.local_layers)}: "
            f"{rd / 'clients'}/client<i>.safetensors; stage two takes them with the client, "
            f"e.g. python launch/finetune.py --backbone {rd} --client {first}"
        )
    print(f"[fedssl] metrics:    {rd / 'metrics.csv'}  plot: {rd / 'accuracy.png'}")
    print(f"[fedssl] checkpoints: {rd / 'checkpoints'} (resume: --resume {rd})")
