"""Non-IID federated learning (paper 004, ``launch/noniid.py``): dominant-label (or Dirichlet)
clients, an MLP, a strategy (``STRATEGIES``), and the centralized baseline beside it.

The run directory ``runs/<name>/`` holds the federated run (metrics.csv, accuracy.png,
partition.json, checkpoints), ``label_histogram.md`` (each client's labels, as the paper's Table
1), ``summary.json`` (final and last-5-round accuracy, seconds per round, Flower's share of the
round), ``centralized.json`` (the baseline: the same MLP on all clients' training data for as many
epochs as there are rounds) and ``fed_vs_central.png`` (test accuracy per round / epoch).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["STRATEGIES", "run_name", "histogram_table", "round_timing", "summary", "run"]

#: strategy name -> overrides (the ``setdefault`` ones apply unless the user set that key)
STRATEGIES: dict[str, tuple[list[str], dict[str, str]]] = {
    "fedavg": (["federation.method=avg"], {}),
    "fedprox": (["federation.method=avg"], {"train.prox_mu": "0.01"}),
    "fedavgm": (["federation.method=avg"], {"federation.server_momentum": "0.9"}),
    "fedadam": (["federation.method=avg", "federation.server_opt=adam"], {}),
    "fedyogi": (["federation.method=avg", "federation.server_opt=yogi"], {}),
    "median": (["federation.method=median"], {}),
    "trimmed_mean": (["federation.method=trimmed_mean"], {}),
}


def run_name(cfg, strategy: str, name: str | None = None) -> str:
    """``name``, else ``noniid-<dataset>-<skew>-<strategy>``."""
    d = cfg.data
    skew = f"p{d.dominant_p:g}" if d.partition == "dominant_label" else d.partition
    if d.partition == "dirichlet":
        skew = f"dir{d.dirichlet_alpha:g}"
    return name or f"noniid-{d.name}-{skew}-{strategy}"


def histogram_table(cfg) -> tuple[str, list[str]]:
    """Markdown table of every client's training labels (count and share), and notes."""
    import numpy as np

    from fedssl.data.client_tensors import dataset_and_splits

    ds, splits = dataset_and_splits(cfg.data)
    c = ds.num_classes
    lines = [
        "| client | " + " | ".join(str(k) for k in range(c)) + " | total |",
        "|---|" + "---|" * (c + 1),
    ]
    for i, s in enumerate(splits):
        h = np.bincount(ds.labels[s.train], minlength=c)
        cells = [f"{n} ({100 * n / max(1, h.sum()):.0f}%)" for n in h]
        lines.append(f"| {i} | " + " | ".join(cells) + f" | {h.sum()} |")
    notes = []
    per_client = int(np.mean([len(s.train) for s in splits]))
    if "subset" in ds.source:
        notes.append(
            f"{ds.name}: {ds.source} — each client holds ~{per_client} training images instead "
            "of the paper's ~7,000 (`python -m fedssl.data.fetch mnist` fetches the full MNIST)."
        )
    return "\n".join(lines), notes


def plot_fed_vs_central(rows: list[dict], central: list[dict] | None, path: Path) -> None:
    from fedssl.plots import plot_curves

    series = {}
    fed = [(r["round"], r["merged_acc"]) for r in rows if r.get("merged_acc") is not None]
    if fed:
        series["federated (per round)"] = ([p[0] for p in fed], [p[1] for p in fed])
    if central:
        series["centralized (per epoch)"] = (
            [h["epoch"] for h in central],
            [h["test_acc"] for h in central],
        )
    plot_curves(series, path, title="test accuracy: federated vs centralized", ylabel="accuracy")


def round_timing(rows: list[dict], clients_at_once: int) -> dict:
    """Seconds per round and Flower's share of it, over rounds 2+ (round 1 also starts Ray).

    Client work per round = each client's seconds inside its task (``work_s``: data, model,
    Lightning fit, local evaluation; ``train_s`` for runs without it) summed and divided by how
    many clients run at once (``clients_at_once``, Ray's CPUs / CPUs per client); the rest of the
    round's train phase (messages, serialisation, Ray scheduling, the merge) is counted as
    Flower's overhead.
    """
    import numpy as np

    timed = [r for r in rows if r["round"] > 1 and r.get("round_s") is not None]
    if not timed:
        timed = [r for r in rows if r["round"] > 0 and r.get("round_s") is not None]
    if not timed:
        return {}
    per_round, compute, phase = [], [], []
    for r in timed:
        col = "work_s_c" if any(k.startswith("work_s_c") for k in r) else "train_s_c"
        train = [v for k, v in r.items() if k.startswith(col) and v is not None]
        per_round.append(float(r["round_s"]))
        phase.append(float(r.get("train_phase_s") or r["round_s"]))
        compute.append(sum(float(v) for v in train) / max(1, clients_at_once))
    s_round, s_phase, s_compute = (float(np.mean(x)) for x in (per_round, phase, compute))
    return {
        "s_per_round": s_round,
        "train_phase_s": s_phase,
        "client_compute_s": s_compute,
        "overhead_share": max(0.0, s_phase - s_compute) / s_round,
    }


def summary(cfg, strategy: str, rows: list[dict], central, fed_s: float) -> dict:
    """What one run measured, for ``summary.json`` and the benchmark tables."""
    import os

    import numpy as np

    accs = [
        (r["round"], r["merged_acc"])
        for r in rows
        if r["round"] > 0 and r.get("merged_acc") is not None
    ]
    last5 = [a for _, a in accs[-5:]]
    from fedssl.data.datasets import build_dataset

    out = {
        "dataset": cfg.data.name,
        "data_source": build_dataset(cfg.data.name, "all", root=cfg.data.root).source,
        "partition": cfg.data.partition,
        "p": cfg.data.dominant_p if cfg.data.partition == "dominant_label" else None,
        "alpha": cfg.data.dirichlet_alpha if cfg.data.partition == "dirichlet" else None,
        "strategy": strategy,
        "clients": cfg.data.num_clients,
        "rounds": accs[-1][0] if accs else 0,
        "fed_acc": accs[-1][1] if accs else None,
        "fed_acc_last5": float(np.mean(last5)) if last5 else None,
        "fed_best": max(a for _, a in accs) if accs else None,
        "fed_s": fed_s,
        "lr": cfg.train.lr,
        "batch_size": cfg.train.batch_size,
        "local_epochs": cfg.train.local_epochs,
        "fraction": cfg.federation.fraction_train,
    }
    from fedssl.federation.server_app import privacy_report
    from fedssl.runs import RunDir

    if privacy := privacy_report(cfg, RunDir(cfg.run_dir()).state()):
        out["privacy"] = privacy
    at_once = max(1, int((os.cpu_count() or 1) // max(cfg.federation.cpus_per_client, 1e-9)))
    out.update(round_timing(rows, min(at_once, cfg.data.num_clients)))
    if central:
        out["central_acc"] = central[-1]["test_acc"]
        if out["fed_acc"] is not None:
            out["ratio"] = out["fed_acc"] / out["central_acc"]
            out["ratio_last5"] = out["fed_acc_last5"] / out["central_acc"]
    return out


def run(
    cfg,
    strategy: str,
    resume: bool = False,
    centralized: bool = True,
    verbose: bool = False,
    histogram: tuple[str, list[str]] | None = None,
    backend: dict | None = None,
) -> dict:
    """The federated run of ``cfg`` (its run directory already claimed), the centralized
    baseline beside it (unless ``centralized`` is False), the plots and ``summary.json``.
    Returns the summary. ``histogram``: :func:`histogram_table` of ``cfg`` when the caller
    already computed it (the launcher does, as a check before anything starts); ``backend``:
    preflight's, where the caller ran it (:func:`fedssl.federation.simulation.simulate`).

    Raises:
        FederationFailed: the federation could not go on.
    """
    from fedssl.federation.simulation import simulate
    from fedssl.runs import RunDir, write_text_atomic

    table, notes = histogram if histogram is not None else histogram_table(cfg)
    rd = RunDir(cfg.run_dir())
    d, f = cfg.data, cfg.federation
    skew = (
        f"dominant label p={d.dominant_p}"
        if d.partition == "dominant_label"
        else (f"Dirichlet alpha={d.dirichlet_alpha}" if d.partition == "dirichlet" else d.partition)
    )
    print(
        f"[fedssl] non-IID: {d.num_clients} clients of {d.name}, {skew}; {cfg.model.name}; "
        f"{strategy}, {f.rounds} rounds; run dir {rd.path}",
        flush=True,
    )
    for n in notes:
        print(f"[fedssl] note: {n}", flush=True)
    (rd.path / "label_histogram.md").write_text(
        f"# Training labels per client ({skew})\n\n{table}\n" + "".join(f"\n{n}\n" for n in notes)
    )
    t = time.perf_counter()
    simulate(cfg, resume=resume, verbose=verbose, backend=backend)
    fed_s = time.perf_counter() - t
    rows = rd.metrics()
    last = rows[-1]
    rounds_done = max(1, len([r for r in rows if r["round"] > 0]))
    print(
        f"[fedssl] federated: final test accuracy {last['merged_acc']:.4f} after round "
        f"{last['round']} ({fed_s:.0f}s, {fed_s / rounds_done:.2f} s/round)",
        flush=True,
    )
    central = None
    if centralized:
        from fedssl.experiments.centralized import train_centralized

        t = time.perf_counter()
        central = train_centralized(cfg, f.rounds, threads=2)
        write_text_atomic(rd.path / "centralized.json", json.dumps(central, indent=1))
        c = central[-1]["test_acc"]
        print(
            f"[fedssl] centralized: {c:.4f} after {f.rounds} epochs "
            f"({time.perf_counter() - t:.0f}s); federated / centralized = "
            f"{last['merged_acc'] / c:.3f}",
            flush=True,
        )
    plot_fed_vs_central(rows, central, rd.path / "fed_vs_central.png")
    summ = summary(cfg, strategy, rows, central, fed_s)
    write_text_atomic(rd.path / "summary.json", json.dumps(summ, indent=1))
    if "overhead_share" in summ:
        print(
            f"[fedssl] {summ['s_per_round']:.2f} s/round; clients' training "
            f"{summ['client_compute_s']:.2f} s of it, Flower's overhead "
            f"{summ['overhead_share']:.0%} of the round",
            flush=True,
        )
    print(f"[fedssl] {rd.path}: metrics.csv, summary.json, fed_vs_central.png, label_histogram.md")
    return summ
