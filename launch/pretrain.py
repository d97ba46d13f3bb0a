"""Stage one (paper 003): federated SimCLR pretraining of a shared backbone, on Flower.

Examples::

    python launch/pretrain.py                 # embedded default: Fashion-MNIST + MNIST, offline
    python launch/pretrain.py --rounds 2 --set data.max_per_client=1000   # a quick look
    python launch/pretrain.py --config configs/pretrain/paper.yaml \\
        --set data.roots.intel_scene=/data/intel      # the paper: ResNet-50, Flowers102 + Intel
    python launch/pretrain.py --resume runs/pretrain-default   # continue after an interruption

Every client trains SimCLR (timm backbone, lightly head/loss/views) on its unlabeled images; the
backbone and projection head are merged by FedAvg each round. Each round every client scores the
merged backbone by kNN on its own labeled data. The run directory holds ``backbone.safetensors``
(the merged backbone, architecture in its metadata), ``config.yaml``, ``metrics.csv``,
``accuracy.png``, ``partition.json``, ``checkpoints/`` and the W&B files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedssl.cli import add_run_args, print_config, resolve_config  # noqa: E402
from fedssl.config import ConfigError, ExperimentConfig  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "default.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(p, DEFAULT_CONFIG)
    return p.parse_args(argv)


def check_data(cfg: ExperimentConfig) -> list[str]:
    """Load every client's split up front (the simulation runs all clients on this machine), so
    missing data fails here with the dataset's own how-to-get-it message. Returns summary lines.
    """
    from fedssl.data.tasks import client_task

    lines = []
    for pid, name in enumerate(cfg.data.clients):
        t = client_task(cfg.data, pid)
        lines.append(
            f"  client {pid}: {name} ({t.train.source}) {len(t.unlabeled)} unlabeled for SimCLR, "
            f"{len(t.labeled)} labeled (kNN bank), {len(t.test)} test, {t.num_classes} classes"
        )
    return lines


def summary(cfg: ExperimentConfig) -> list[str]:
    """Random-init vs final kNN accuracy per client, from the run's metrics."""
    from fedssl.runs import RunDir

    rows = RunDir(cfg.run_dir()).metrics()
    init = {
        k[len("knn_init_") :]: v
        for r in rows
        for k, v in r.items()
        if k.startswith("knn_init_") and v is not None
    }
    evals = [r for r in rows if r.get("knn_acc_mean") is not None]
    if not evals:
        return ["[fedssl] no evaluated round in the metrics"]
    last = evals[-1]
    out = [f"[fedssl] kNN accuracy of the backbone (round {last['round']}):"]
    for pid, name in enumerate(cfg.data.clients):
        c = f"c{pid}"
        final = last.get(f"knn_acc_{c}")
        if final is None:
            continue
        before = init.get(c)
        gain = "" if before is None else f" (random init {before:.4f}, gain {final - before:+.4f})"
        out.append(f"  client {pid} {name}: {final:.4f}{gain}")
    if len(init) == len(cfg.data.clients) and init:
        mean_init = sum(init.values()) / len(init)
        out.append(
            f"  mean: {last['knn_acc_mean']:.4f} (random init {mean_init:.4f}, "
            f"gain {last['knn_acc_mean'] - mean_init:+.4f})"
        )
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg, resume = resolve_config(args)
        if args.print_config:
            print_config(cfg)
            return 0
        if cfg.experiment != "pretrain":
            raise ConfigError(f"experiment: {cfg.experiment!r}; launch/pretrain.py runs pretrain")
        from fedssl.data.datasets import DatasetNotFoundError
        from fedssl.federation.simulation import preflight

        preflight(cfg)  # device, precision, Ray resources, backbone: before anything starts

        from fedssl.runs import RunExistsError, claim_run_dir

        try:
            lines = check_data(cfg)
            aside = claim_run_dir(cfg.run_dir(), resume, args.overwrite)  # the last check
        except (DatasetNotFoundError, RunExistsError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if aside is not None:
            print(f"[fedssl] the earlier run is kept at {aside}", flush=True)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from fedssl.cli import runtime_line
    from fedssl.federation.simulation import simulate
    from fedssl.federation.strategy import FederationFailed
    from fedssl.tracking import resolve_mode

    f, m, t = cfg.federation, cfg.model, cfg.train
    local = f"{t.local_steps} steps" if t.local_steps else f"{t.local_epochs} epoch(s)"
    print(
        f"[fedssl] stage one: SimCLR {m.backbone} ({m.image_size}px) x {len(cfg.data.clients)} "
        f"clients, FedAvg, {f.rounds} rounds of {local}; W&B {resolve_mode(cfg.tracking.wandb)}; "
        f"run dir {cfg.run_dir()}",
        flush=True,
    )
    print("\n".join(lines), flush=True)
    print(runtime_line(cfg, comment=False), flush=True)
    t = time.perf_counter()
    try:
        simulate(cfg, resume=resume, verbose=args.verbose)
    except FederationFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rd = cfg.run_dir()
    print("\n".join(summary(cfg)))
    print(f"[fedssl] done in {time.perf_counter() - t:.0f}s")
    print(f"[fedssl] backbone:   {rd / 'backbone.safetensors'} (config: {rd / 'config.yaml'})")
    print(f"[fedssl] metrics:    {rd / 'metrics.csv'}  plot: {rd / 'accuracy.png'}")
    print(f"[fedssl] checkpoints: {rd / 'checkpoints'} (resume: --resume {rd})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
