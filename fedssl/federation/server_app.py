"""The fedssl ``ServerApp``: runs the rounds with :class:`MergeStrategy`, evaluates the merged
model on the server's test set, and keeps the run directory (config, manifest, metrics, plot,
checkpoints) and the W&B run.

``app`` (for ``flwr run .``) reads its config from the run config: ``config`` names a YAML file
and every other key is a dotted override. Launch scripts call :func:`make_server_app` with a
config object instead.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from flwr.app import ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedssl.config import ExperimentConfig, load_config, save_config, to_dict
from fedssl.data.manifest import write_manifest
from fedssl.federation.client_work import CONFIG_KEY
from fedssl.federation.kinds import Task, get_task
from fedssl.federation.preflight import check_ssl_section, num_clients
from fedssl.federation.records import from_record, to_record
from fedssl.federation.secagg import secagg_plan, secure_rounds
from fedssl.federation.strategy import (
    EngineFailed,
    FederationFailed,
    MergeStrategy,
    build_strategy,
)
from fedssl.plots import plot_curves
from fedssl.privacy import Ledger, describe, reproducible_noise, sampled_clients
from fedssl.runs import RunDir, claim_run_dir
from fedssl.tracking import Tracker

__all__ = [
    "app",
    "make_server_app",
    "watch_grid",
    "run_server",
    "config_from_run_config",
    "failed_rounds_line",
    "privacy_report",
]

log = logging.getLogger(__name__)
VELOCITY_FILE = "server_momentum.safetensors"  # FedAvgM's momentum buffer, for --resume
MOMENTS_FILE = "server_opt.safetensors"  # FedAdam/FedYogi/FedAdagrad moments, for --resume
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


def _row(
    rnd: int, server: dict, strategy: MergeStrategy, task: Task, round_s: float
) -> dict[str, Any]:
    row: dict[str, Any] = {"round": rnd, **server}
    for m in strategy.client_metrics.get(rnd, [])[:1]:  # SecAgg+'s round tally, one per round
        row.update({k: v for k, v in m.items() if k.startswith("secagg_")})
    for m in strategy.client_metrics.get(rnd, []):
        c = int(m.get("partition-id", 0))
        for col in task.train_columns:
            v = m.get(col)
            row[f"{col}_c{c}"] = None if v is None or (col.endswith("_acc") and v < 0) else v
    evals = strategy.eval_metrics.get(rnd, [])
    for col in task.eval_columns:
        vals = []
        for m in evals:
            if col in m:
                row[f"{col}_c{int(m.get('partition-id', 0))}"] = m[col]
                vals.append(float(m[col]))
        if vals:
            row[f"{col}_mean"] = sum(vals) / len(vals)
    info = strategy.round_info.get(rnd, {})
    row.update(_phases(rnd, strategy, info, round_s))
    row.update(
        {
            "round_s": round_s,
            "clients": info.get("clients"),
            "failures": info.get("failures"),
            "timeouts": info.get("timeouts"),
            "merge_s": info.get("merge_s"),
            "train_phase_s": info.get("train_phase_s"),
            "bytes_up": info.get("bytes_up"),
            "bytes_down": info.get("bytes_down"),
        }
    )
    return row


def _phases(rnd: int, strategy: MergeStrategy, info: dict, round_s: float) -> dict[str, Any]:
    """Where a round's wall time went, beside the clients' own columns (``work_s_c<i>``: a
    train message's work, split into ``data_s``, ``train_s`` and ``other_s``; ``eval_s_c<i>``:
    an evaluate message's): ``eval_phase_s`` (evaluate messages out to the last reply),
    ``engine_s`` (the engine's and messaging's share of both phases: each phase less its slowest
    client's work) and ``server_s`` (merge, checkpoints, plots, server-side evaluation: the
    round less its two phases)."""
    train_phase, eval_phase = info.get("train_phase_s"), info.get("eval_phase_s", 0.0)
    if train_phase is None:
        return {"eval_phase_s": eval_phase or None, "engine_s": None, "server_s": None}
    work = [float(m["work_s"]) for m in strategy.client_metrics.get(rnd, []) if "work_s" in m]
    evals = [float(m["eval_s"]) for m in strategy.eval_metrics.get(rnd, []) if "eval_s" in m]
    engine = None
    if work:
        engine = max(0.0, train_phase - max(work))
        engine += max(0.0, eval_phase - max(evals)) if evals else eval_phase
    return {
        "eval_phase_s": eval_phase,
        "engine_s": engine,
        "server_s": max(0.0, round_s - train_phase - eval_phase),
    }


def _plot(rd: RunDir, cfg: ExperimentConfig, title: str, task: Task) -> None:
    """``accuracy.png``: the headline and each client's curves, labelled by dataset where the
    clients have one, with the task's per-client baselines as dashed levels."""
    rows = rd.metrics()
    names = cfg.data.clients

    def who(pid: str) -> str:
        return f"{names[int(pid)]} (c{pid})" if int(pid) < len(names) else f"c{pid}"

    def label(col: str) -> str:
        base, _, pid = col.rpartition("_c")
        if base and pid.isdigit():
            return f"{base.replace('_', ' ')} {who(pid)}"
        return col.replace("_", " ")

    cols = [task.headline] + sorted(
        {k for r in rows for k in r for c in task.plot_columns if k.startswith(f"{c}_c")}
    )
    series = {}
    for col in cols:
        pts = [(r["round"], r[col]) for r in rows if r.get(col) is not None]
        if pts:
            series[label(col)] = ([p[0] for p in pts], [p[1] for p in pts])
    levels = {}
    for col, name in task.plot_levels:
        for k, v in next((r for r in rows if any(x.startswith(col) for x in r)), {}).items():
            pid = k.rpartition("_c")[2]
            if k.startswith(f"{col}_c") and pid.isdigit() and v is not None:
                levels[f"{name}, {who(pid)}"] = (v, label(f"{task.plot_columns[0]}_c{pid}"))
    if series:
        plot_curves(series, rd.path / "accuracy.png", title=title, ylabel=task.ylabel,
                    levels=levels)  # fmt: skip


def _progress(cfg: ExperimentConfig, task: Task, row: dict[str, Any]) -> str:
    parts = [f"[fedssl] {cfg.name} round {row['round']}/{cfg.federation.rounds}"]
    if row.get(task.headline) is not None:
        parts.append(f"{task.headline}={row[task.headline]:.4f}")
    for col, fmt in task.progress_columns:
        parts += [
            f"{k}={v:{fmt}}" for k, v in row.items() if k.startswith(f"{col}_c") and v is not None
        ]
    if row.get("secagg_mean_train_loss") is not None:  # SecAgg+: the mean, never one client's
        parts.append(f"train_loss_mean={row['secagg_mean_train_loss']:.3f}")
    if row.get("secagg_clipped"):
        parts.append(f"secagg_clipped={row['secagg_clipped']}")
    if row.get("clients") == 0:
        parts.append("FAILED: no usable client reply, the model is unchanged")
    parts.append(f"({row.get('round_s') or 0:.1f}s)")
    return " ".join(parts)


def _keep_round(rd: RunDir, cfg, task: Task, strategy, tracker, rnd: int, sd, row: dict) -> None:
    """Everything a finished round leaves behind: its metrics row, the W&B record, and when
    it merged, the strategy's server state (momentum, optimizer moments), the checkpoint and
    the task's export (e.g. the backbone file); a round that merged nothing is listed in
    ``state.json`` (``failed_rounds``: what its clients said) and writes no weights."""
    rd.log_metrics(row)
    tracker.log({k: v for k, v in row.items() if v is not None}, step=rnd)
    if strategy.failed(rnd):  # nothing was merged: the last good round's files stay as they are
        failed = {str(r): why for r, why in strategy.failed_rounds().items()}
        rd.update_state(failed_rounds={**(rd.state().get("failed_rounds") or {}), **failed})
        return
    if strategy.velocity:
        rd.save_tensors(VELOCITY_FILE, strategy.velocity)
    if hasattr(strategy, "moments"):
        rd.save_tensors(MOMENTS_FILE, strategy.moments())
    rd.save_checkpoint(rnd, sd)
    _keep_received_keys(rd, getattr(strategy, "received_keys", None), rnd)
    task.on_checkpoint(cfg, rd.path, rnd, sd)


def _keep_received_keys(rd: RunDir, keys: list[str] | None, rnd: int) -> None:
    """``<run>/received-keys.json``: the state-dict keys the server received from clients (the
    configured travelling parts, nothing else), rewritten only when they change."""
    import json

    from fedssl.runs import write_text_atomic

    if not keys:
        return
    f = rd.path / "received-keys.json"
    if f.is_file() and json.loads(f.read_text()).get("keys") == keys:
        return
    parts = sorted({k.split(".", 1)[0] for k in keys})
    write_text_atomic(f, json.dumps({"round": rnd, "parts": parts, "keys": keys}, indent=1))


def _stop_if_failing(rd: RunDir, cfg, strategy, rnd: int) -> None:
    """Raise FederationFailed after ``federation.max_failed_rounds`` rounds in a row without
    enough usable replies (recorded in ``state.json`` as ``failed``)."""
    limit = cfg.federation.max_failed_rounds
    if limit > 0 and strategy.failed_streak >= limit:
        report = strategy.failure_report(rnd)
        rd.update_state(failed=report)
        print(f"[fedssl] {cfg.name} stopped after round {rnd}: {report}", flush=True)
        raise FederationFailed(f"{cfg.name}: {report}")


def run_server(
    grid: Grid, cfg: ExperimentConfig, resume: bool = False, claimed: bool = False
) -> RunDir:
    """Run (or resume) the federated rounds of ``cfg`` and keep its run directory.

    Args:
        grid: Flower's grid (from the ServerApp).
        cfg: the experiment config; ``cfg.experiment`` picks the task.
        resume: continue from the last completed round saved in the run directory.
        claimed: the caller has claimed the run directory (:func:`fedssl.runs.claim_run_dir`);
            else it is claimed here, which refuses to start over an earlier run.
    """
    task = get_task(cfg)
    if not claimed:
        claim_run_dir(cfg.run_dir(), resume=resume)
    rd = RunDir(cfg.run_dir())
    start_round = 0
    velocity = moments = None
    if resume and rd.state().get("checkpoint") is None and not rd.metrics():
        # stopped before its first round ended (e.g. the engine could not start): nothing to
        # continue, so it starts at round one in the same directory
        print(f"[fedssl] {rd.path} holds no completed round: starting at round 1", flush=True)
        resume = False
    if resume:
        start_round, state = rd.load_checkpoint()
        velocity = rd.load_tensors(VELOCITY_FILE)
        moments = rd.load_tensors(MOMENTS_FILE)
        rd.truncate_metrics(start_round)
        print(f"[fedssl] resuming {rd.path} after round {start_round}", flush=True)
    else:
        state = task.initial_state(cfg)
    save_config(cfg, rd.path / "config.yaml")
    write_manifest(rd.path / "partition.json", task.manifest(cfg))
    tracker = Tracker(
        cfg.tracking.wandb,
        cfg.tracking.project,
        cfg.name,
        rd.path,
        to_dict(cfg),
        run_id=rd.state().get("wandb_id") if resume else None,
    )
    earlier = {r: why for r, why in (rd.state().get("failed_rounds") or {}).items()
               if resume and int(r) <= start_round}  # fmt: skip
    rd.update_state(
        wandb_id=tracker.run_id, experiment=cfg.experiment, failed=None, failed_rounds=earlier
    )

    ledger = Ledger((rd.state().get("privacy") or {}) if resume else None)
    ledger.keep_until(start_round)
    f = cfg.federation
    n_clients = num_clients(cfg)
    strategy = build_strategy(
        server_opt=f.server_opt,
        opt_args=f.server_opt_args,
        moments=moments,
        method=f.method,
        weighted=f.weighted,
        round_offset=start_round,
        eval_every=f.eval_every,
        total_rounds=f.rounds,
        server_momentum=f.server_momentum,
        server_lr=f.server_lr,
        velocity=velocity,
        fraction_train=f.fraction_train,
        min_train_nodes=min(f.min_clients, n_clients),
        min_available_nodes=min(f.min_clients, n_clients),
        fraction_evaluate=1.0 if task.federated_evaluation else 0.0,
        min_evaluate_nodes=min(f.min_clients, n_clients),
        min_replies=f.min_replies or max(1, min(f.min_clients, n_clients)),
        central=cfg.privacy.central,
        clip_norm=ledger.clipping_norm(),
    )
    if cfg.privacy.secagg.enabled:
        c = cfg.privacy.central
        clip = c.clipping_norm if c.enabled and c.clipping == "client" else None
        secure_rounds(
            grid, secagg_plan(cfg.privacy.secagg, sampled_clients(cfg), clip), f.timeout_s
        )
    remaining = f.rounds - start_round
    clock = {"t": time.perf_counter()}

    def evaluate(server_round: int, arrays) -> MetricRecord | None:
        rnd = server_round + start_round
        sd = from_record(arrays)
        if server_round == 0:  # the initial weights (not logged again on resume)
            server = {} if resume else task.server_evaluate(cfg, sd)
            if server:
                rd.log_metrics({"round": 0, **server})
                tracker.log(server, step=0)
            return None
        server = task.server_evaluate(cfg, sd) if strategy.is_eval_round(rnd) else {}
        now = time.perf_counter()
        row = _row(rnd, server, strategy, task, now - clock["t"])
        clock["t"] = now
        if strategy.replied.get(rnd):  # replies reached the server: merged or not, it counts
            row.update(_account(rd, cfg, strategy, ledger, rnd))
        _keep_round(rd, cfg, task, strategy, tracker, rnd, sd, row)
        _stop_if_failing(rd, cfg, strategy, rnd)
        print(_progress(cfg, task, row), flush=True)  # every round; scores on scored rounds
        if not strategy.is_eval_round(rnd):
            return None
        _plot(rd, cfg, f"{cfg.name}: {f.method}", task)
        head = row.get(task.headline)
        return MetricRecord({task.headline: head}) if head is not None else None

    try:
        if remaining <= 0:
            print(f"[fedssl] {rd.path} already completed {start_round} rounds", flush=True)
            return rd
        config = ConfigRecord({CONFIG_KEY: yaml.safe_dump(to_dict(cfg))})
        strategy.start(
            grid=grid,
            initial_arrays=to_record(state, packed=strategy.packs_records),
            num_rounds=remaining,
            timeout=f.timeout_s,
            train_config=config,
            evaluate_config=ConfigRecord(dict(config)),
            evaluate_fn=evaluate,
        )
        _fail_if_nothing_merged(rd, cfg, strategy, start_round + 1, start_round + remaining)
        if line := failed_rounds_line(rd.state()):
            print(line, flush=True)
        if line := describe(privacy_report(cfg, rd.state())):
            print(line, flush=True)
    finally:
        tracker.finish()
    return rd


def privacy_report(cfg: ExperimentConfig, state: dict) -> dict:
    """The ε a run spent so far (``state.json``'s ``privacy`` ledger): client-level and per
    client record-level; empty for a run without differential privacy. ``reproducible_noise``
    lists the settings whose noise a seed made reproducible (their ε does not hold against
    anyone who knows the seed)."""
    p = cfg.privacy
    report = Ledger(state.get("privacy")).report(
        p.central.delta, p.dp_sgd.delta, p.central.clipping_norm
    )
    if report and (seeded := reproducible_noise(cfg)):
        report["reproducible_noise"] = seeded
    return report


def _account(rd: RunDir, cfg, strategy: MergeStrategy, ledger: Ledger, rnd: int) -> dict:
    """Enter round ``rnd``'s privacy spending in the ledger (``state.json``): every round whose
    replies reached the server, whether it merged them or not (the server held them); return
    the metrics row's privacy columns (ε so far, the round's clipping record)."""
    c = cfg.privacy.central
    if c.enabled:
        ledger.add_central(
            rnd, float(c.noise_multiplier), strategy.clip_norm if c.adaptive else None
        )
    for m in strategy.replied.get(rnd, []):
        if "dp_steps" in m:
            ledger.add_client(
                rnd, int(m.get("partition-id", 0)), m["dp_noise"], m["dp_rate"], int(m["dp_steps"])
            )
    if not (ledger.central or ledger.dp_sgd):
        return {}
    rd.update_state(privacy=ledger.to_state())
    report = ledger.report(c.delta, cfg.privacy.dp_sgd.delta, c.clipping_norm)
    info = strategy.round_info.get(rnd, {})
    cols = {
        k: info[k] for k in ("dp_update_norm_max", "dp_clipped", "dp_clipping_norm") if k in info
    }
    if "central" in report:
        cols["epsilon_central"] = report["central"]["epsilon"]
    for pid, r in report.get("dp_sgd", {}).items():
        cols[f"epsilon_c{pid}"] = r["epsilon"]
    return cols


def failed_rounds_line(state: dict) -> str | None:
    """The end-of-run line for the rounds that merged nothing (``state.json``'s
    ``failed_rounds``: the model stayed as it was), with the first reason; None if none."""
    failed = state.get("failed_rounds") or {}
    if not failed:
        return None
    rounds = sorted(failed, key=int)
    first = next((why[0] for r in rounds if (why := failed[r])), "no reply arrived")
    return (
        f"[fedssl] {len(rounds)} round(s) merged no usable reply, the model unchanged: "
        f"{', '.join(rounds)} (first: round {rounds[0]}, {first}; all in state.json)"
    )


def _fail_if_nothing_merged(rd: RunDir, cfg, strategy, first: int, last: int) -> None:
    """A run whose rounds ``first``-``last`` merged no usable reply did not train: mark its run
    directory as failed (``state.json``) and raise :class:`FederationFailed` with what the
    clients said."""
    if strategy.merged_rounds:
        return
    rd.update_state(failed=strategy.failure_report(last))
    rounds = f"round {last}" if first == last else f"rounds {first}-{last}"
    raise FederationFailed(
        f"{cfg.name}: no round merged a usable reply ({rounds}); the first client error: "
        f"{strategy.first_error()}. Nothing was written as a trained model; {rd.path}/state.json "
        "says why"
    )


def watch_grid(grid: Grid, engine_down: threading.Event) -> Grid:
    """Make ``grid`` raise :class:`EngineFailed` once ``engine_down`` is set: its waits for
    nodes and replies poll ``get_node_ids`` and ``pull_messages``, so a server waiting on an
    engine that has died stops within one poll instead of at ``federation.timeout_s``."""
    for name in ("get_node_ids", "push_messages", "pull_messages"):
        real = getattr(grid, name)

        def watched(*args, _real=real, **kwargs):
            if engine_down.is_set():
                raise EngineFailed("the engine stopped; the server stops waiting for replies")
            return _real(*args, **kwargs)

        setattr(grid, name, watched)  # the instance's: the grid's own loops call these
    return grid


#: seconds between the server's polls for replies under the deployment engine
REPLY_POLL_S = 0.2


def poll_replies(grid: Grid, interval: float = REPLY_POLL_S) -> Grid:
    """Have ``grid`` look for replies every ``interval`` seconds. Flower's deployment grid
    waits a fixed 3 s between its polls of the SuperLink, so a reply waited 1.5 s on average
    after it arrived, twice a round; the simulation's grid (which has a ``pull_interval`` of
    its own) is left as it is. Same contract as ``Grid.send_and_receive``: push, then pull
    until every message has its reply or ``timeout`` passed."""
    if hasattr(grid, "pull_interval"):
        return grid

    def send_and_receive(messages, *, timeout: float | None = None):
        waiting = set(grid.push_messages(messages))
        end = time.time() + (timeout or 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end:
            got = list(grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting:
                break
            time.sleep(interval)
        return replies

    grid.send_and_receive = send_and_receive  # the instance's: the strategy calls it
    return grid


def make_server_app(
    cfg: ExperimentConfig | None = None,
    resume: bool = False,
    engine_down: threading.Event | None = None,
    finished: threading.Event | None = None,
) -> ServerApp:
    """A ServerApp running ``cfg`` (or the run config's, when None). A given ``cfg`` has been
    checked and its run directory claimed (:func:`fedssl.federation.simulation.simulate`);
    the run config's is checked and claimed here. With ``engine_down``, the server stops
    (:class:`EngineFailed`) once it is set (:func:`watch_grid`); ``finished`` is set when the
    server's main returns or raises."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            if engine_down is not None:
                watch_grid(grid, engine_down)
            poll_replies(grid)
            run_cfg = cfg  # given: checked and claimed before the engine started
            if run_cfg is None:  # `flwr run`: its errors and warnings, before round one
                run_cfg = config_from_run_config(context.run_config)
                check_ssl_section(run_cfg)
            run_server(grid, run_cfg, resume, claimed=cfg is not None)
        finally:
            if finished is not None:
                finished.set()

    return server


app = make_server_app()
