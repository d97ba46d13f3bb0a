"""Stage one as ``launch/pretrain.py`` runs it: every client's data checked up front, the
federated run on Flower (simulation), and the end-of-run report of the backbone's kNN accuracy."""

from __future__ import annotations

import time

from fedssl.config import ExperimentConfig

__all__ = ["check_data", "summary", "run"]


def check_data(cfg: ExperimentConfig) -> list[str]:
    """Load every client's split up front (the simulation runs all clients on this machine), so
    missing data fails here with the dataset's own how-to-get-it message. Returns summary lines.
    """
    from fedssl.data.client_images import client_task

    lines = []
    for pid, name in enumerate(cfg.data.clients):
        t = client_task(cfg.data, pid)
        lines.append(
            f"  client {pid}: {name} ({t.train.source}) {len(t.unlabeled)} unlabeled for "
            f"{cfg.ssl.method}, {len(t.labeled)} labeled (kNN bank), {len(t.test)} test, "
            f"{t.num_classes} classes"
        )
    return lines


def summary(cfg: ExperimentConfig) -> list[str]:
    """The backbone's final kNN accuracy per client against its baselines, from the run's
    metrics: raw pixels first (the baseline that can beat it), then random init."""
    from fedssl.runs import RunDir

    rows = RunDir(cfg.run_dir()).metrics()

    def first(prefix: str) -> dict[str, float]:
        return {
            k[len(prefix) :]: v
            for r in rows
            for k, v in r.items()
            if k.startswith(prefix) and v is not None
        }

    pixels, init = first("knn_pixels_"), first("knn_init_")
    evals = [r for r in rows if r.get("knn_acc_mean") is not None]
    if not evals:
        return ["[fedssl] no evaluated round in the metrics"]
    last = evals[-1]
    stats = ", each client's own BatchNorm statistics" if cfg.ssl.knn_bn == "client" else ""
    out = [f"[fedssl] kNN accuracy of the backbone (round {last['round']}{stats}) against raw "
           "pixels (same bank, queries, k and temperature) and random init:"]  # fmt: skip
    for pid, name in enumerate(cfg.data.clients):
        c = f"c{pid}"
        final = last.get(f"knn_acc_{c}")
        if final is None:
            continue
        parts = []
        if pixels.get(c) is not None:
            verdict = "above" if final > pixels[c] else "NOT above"
            parts.append(f"raw pixels {pixels[c]:.4f}: {final - pixels[c]:+.4f}, {verdict}")
        if init.get(c) is not None:
            parts.append(f"random init {init[c]:.4f}")
        out.append(
            f"  client {pid} {name}: {final:.4f}" + (f" ({'; '.join(parts)})" if parts else "")
        )
    return out


def run(cfg: ExperimentConfig, data_lines: list[str], resume: bool = False, verbose: bool = False):
    """The federated stage one of ``cfg`` (its run directory already claimed), with progress
    and the final report. ``data_lines``: :func:`check_data`'s.

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
    t0 = time.perf_counter()
    simulate(cfg, resume=resume, verbose=verbose)
    rd = cfg.run_dir()
    print("\n".join(summary(cfg)))
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
