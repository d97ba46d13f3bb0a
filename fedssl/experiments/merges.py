"""The weight-merge experiments of papers 000/001 as ``launch/merge.py`` runs them: one
supervised federated run per merge method (avg / max / absmax ...) and a comparison table, or the
centralized baseline. Run directories are checked by the caller before these start."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fedssl.config import ExperimentConfig

__all__ = ["run_centralized", "run_methods"]


def run_centralized(cfg: ExperimentConfig, epochs: int, out: Path) -> list[dict]:
    """One model on every client's training data for ``epochs`` epochs; writes
    ``<out>/metrics.json`` (test accuracy per epoch) and returns it."""
    from fedssl.experiments.centralized import train_centralized
    from fedssl.runs import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    hist = train_centralized(cfg, epochs)
    write_text_atomic(out / "metrics.json", json.dumps(hist, indent=1))
    print(
        f"[fedssl] centralized: final test_acc={hist[-1]['test_acc']:.4f} "
        f"({time.perf_counter() - t:.0f}s); {out / 'metrics.json'}"
    )
    return hist


def run_methods(
    cfgs: list[tuple[str, ExperimentConfig]],
    summary: Path,
    overwrite: bool = False,
    verbose: bool = False,
    backend: dict | None = None,
) -> dict:
    """Each ``(method, config)`` federated run in turn; with more than one, the table of their
    final accuracies is printed and written to ``summary``. Returns ``{method: RunDir}``.
    ``backend``: preflight's for the configs, where the caller ran it.

    Raises:
        FederationFailed: a federation could not go on (the runs before it are kept).
    """
    from fedssl.federation.preflight import preflight
    from fedssl.federation.simulation import simulate
    from fedssl.runs import RunDir, claim_run_dir, write_text_atomic

    if backend is None and cfgs:
        backend = preflight(cfgs[0][1])
    runs, t_all = {}, time.perf_counter()
    for method, cfg in cfgs:
        aside = claim_run_dir(cfg.run_dir(), overwrite=overwrite)
        if aside is not None:
            print(f"[fedssl] the earlier {cfg.name} is kept at {aside}", flush=True)
        t = time.perf_counter()
        simulate(cfg, verbose=verbose, backend=backend)
        rd = RunDir(cfg.run_dir())
        last = rd.metrics()[-1]
        print(
            f"[fedssl] {cfg.name}: final merged_acc={last['merged_acc']:.4f} "
            f"({time.perf_counter() - t:.0f}s); metrics: {rd.metrics_csv}; "
            f"plot: {rd.path / 'accuracy.png'}"
        )
        runs[method] = rd
    if len(runs) > 1:
        from fedssl.reports import merge_table

        table = merge_table(runs)
        write_text_atomic(
            summary,
            f"# {summary.stem}\n\nwall time {time.perf_counter() - t_all:.0f}s\n\n{table}\n",
        )
        print(table)
        print(f"[fedssl] summary: {summary}")
    return runs
