"""The fedssl ``ServerApp``: runs the rounds with :class:`MergeStrategy`, evaluates the merged
model on the server's test set, and keeps the run directory (config, manifest, metrics, plot,
checkpoints) and the W&B run.

``app`` (for ``flwr run .``) reads its config from the run config: ``config`` names a YAML file
and every other key is a dotted override. Launch scripts call :func:`make_server_app` with a
config object instead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml
from flwr.app import ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedssl.config import ExperimentConfig, load_config, save_config, to_dict
from fedssl.data.clients import dataset_and_splits
from fedssl.data.manifest import partition_manifest, write_manifest
from fedssl.federation.client_app import CONFIG_KEY
from fedssl.federation.records import from_record, to_record
from fedssl.federation.strategy import MergeStrategy
from fedssl.plots import plot_curves
from fedssl.runs import RunDir
from fedssl.tracking import Tracker

__all__ = ["app", "make_server_app", "run_server", "config_from_run_config"]

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


def config_from_run_config(run_config: dict) -> ExperimentConfig:
    """Build the config from Flower's run config.

    ``config`` is a YAML path (relative paths also resolve against the project root),
    ``overrides`` a space-separated list of ``key.sub=value``, and every other key one override.
    """
    rc = dict(run_config)
    path = rc.pop("config", None)
    overrides = str(rc.pop("overrides", "") or "").split()
    overrides += [f"{k}={v}" for k, v in rc.items()]
    if path and not Path(path).is_file() and (ROOT / path).is_file():
        path = str(ROOT / path)
    return load_config(path or None, overrides=overrides)


def _row(rnd: int, acc: float | None, strategy: MergeStrategy, round_s: float) -> dict:
    row: dict = {"round": rnd, "merged_acc": acc}
    for m in strategy.client_metrics.get(rnd, []):
        c = int(m.get("partition-id", 0))
        local = m.get("local_acc")
        row[f"local_acc_c{c}"] = None if local is None or local < 0 else local
        row[f"train_loss_c{c}"] = m.get("train_loss")
        row[f"train_s_c{c}"] = m.get("train_s")
        row[f"received_fingerprint_c{c}"] = m.get("received_fingerprint")
    info = strategy.round_info.get(rnd, {})
    row.update(
        {
            "round_s": round_s,
            "clients": info.get("clients"),
            "failures": info.get("failures"),
            "merge_s": info.get("merge_s"),
            "bytes_up": info.get("bytes_up"),
        }
    )
    return row


def _plot(rd: RunDir, title: str) -> None:
    rows = [r for r in rd.metrics() if r.get("merged_acc") is not None]
    series = {"merged (server test)": ([r["round"] for r in rows], [r["merged_acc"] for r in rows])}
    local_cols = sorted({k for r in rows for k in r if k.startswith("local_acc_c")})
    for col in local_cols:
        pts = [(r["round"], r[col]) for r in rows if r.get(col) is not None]
        series[f"local {col[-2:]}"] = ([p[0] for p in pts], [p[1] for p in pts])
    plot_curves(series, rd.path / "accuracy.png", title=title)


def run_server(grid: Grid, cfg: ExperimentConfig, resume: bool = False) -> RunDir:
    """Run (or resume) the federated rounds of ``cfg`` and keep its run directory.

    Args:
        grid: Flower's grid (from the ServerApp).
        cfg: the experiment config.
        resume: continue from the last completed round saved in the run directory.
    """
    from fedssl.federation.classification import initial_state, server_accuracy

    rd = RunDir(cfg.run_dir())
    start_round = 0
    if resume:
        start_round, state = rd.load_checkpoint()
        rd.truncate_metrics(start_round)
        print(f"[fedssl] resuming {rd.path} after round {start_round}", flush=True)
    else:
        for stale in (rd.metrics_jsonl, rd.metrics_csv, rd.state_file):
            stale.unlink(missing_ok=True)
        state = initial_state(cfg)
    save_config(cfg, rd.path / "config.yaml")
    ds, splits = dataset_and_splits(cfg.data)
    parts = [{"train": s.train, "val": s.val, "test": s.test} for s in splits]
    write_manifest(
        rd.path / "partition.json",
        partition_manifest(
            ds.labels,
            parts,
            ds.num_classes,
            meta={
                "dataset": ds.name,
                "source": ds.source,
                "partition": cfg.data.partition,
                "seed": cfg.data.seed,
            },
        ),
    )
    tracker = Tracker(
        cfg.tracking.wandb,
        cfg.tracking.project,
        cfg.name,
        rd.path,
        to_dict(cfg),
        run_id=rd.state().get("wandb_id") if resume else None,
    )
    rd.update_state(wandb_id=tracker.run_id)

    f = cfg.federation
    strategy = MergeStrategy(
        method=f.method,
        weighted=f.weighted,
        round_offset=start_round,
        fraction_train=f.fraction_train,
        min_train_nodes=f.min_clients,
        min_available_nodes=f.min_clients,
    )
    remaining = f.rounds - start_round
    clock = {"t": time.perf_counter()}

    def evaluate(server_round: int, arrays) -> MetricRecord | None:
        rnd = server_round + start_round
        if server_round == 0 and resume:
            return None
        sd = from_record(arrays)
        skip = rnd and rnd % max(1, f.eval_every) and rnd != f.rounds
        acc = None if skip else server_accuracy(cfg, sd)
        now = time.perf_counter()
        row = _row(rnd, acc, strategy, now - clock["t"]) if rnd else {"round": 0, "merged_acc": acc}
        clock["t"] = now
        rd.log_metrics(row)
        if rnd:
            rd.save_checkpoint(rnd, sd)
        tracker.log({k: v for k, v in row.items() if v is not None}, step=rnd)
        if acc is None:
            return None
        _plot(rd, f"{cfg.name}: {f.method}")
        locs = " ".join(
            f"{k[-2:]}={v:.4f}"
            for k, v in row.items()
            if k.startswith("local_acc") and v is not None
        )
        print(
            f"[fedssl] {cfg.name} round {rnd}/{f.rounds} merged_acc={acc:.4f} {locs} "
            f"({row.get('round_s') or 0:.1f}s)",
            flush=True,
        )
        return MetricRecord({"merged_acc": acc})

    if remaining <= 0:
        print(f"[fedssl] {rd.path} already completed {start_round} rounds", flush=True)
    else:
        train_config = ConfigRecord({CONFIG_KEY: yaml.safe_dump(to_dict(cfg))})
        strategy.start(
            grid=grid,
            initial_arrays=to_record(state),
            num_rounds=remaining,
            timeout=f.timeout_s,
            train_config=train_config,
            evaluate_fn=evaluate,
        )
    tracker.finish()
    return rd


def make_server_app(cfg: ExperimentConfig | None = None, resume: bool = False) -> ServerApp:
    """A ServerApp running ``cfg`` (or the run config's, when None)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(
            grid, cfg if cfg is not None else config_from_run_config(context.run_config), resume
        )

    return server


app = make_server_app()
