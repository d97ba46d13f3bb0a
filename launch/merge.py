"""Weight-merge experiments of papers 000/001 on Fashion-MNIST, run through Flower.

Examples::

    python launch/merge.py --env v --method all          # Table 3 (V-environment), every method
    python launch/merge.py --env h --method avg          # Table 4 (H-environment), FedAvg only
    python launch/merge.py --config configs/merge/tuned-h.yaml --env h
    python launch/merge.py --resume runs/merge-paper-v-avg --rounds 20
    python launch/merge.py --env v --centralized 10      # one model on all 60,000, 10 epochs

Every run writes ``runs/<name>/`` (config.yaml, partition.json, metrics.csv, accuracy.png,
checkpoints/ and the W&B files); ``--method all`` also writes ``runs/<name>-summary.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedssl.cli import add_run_args, print_config, resolve_config, run_overrides  # noqa: E402
from fedssl.config import ConfigError, load_config  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "merge" / "paper.yaml"
ALL = ("avg", "max", "absmax", "absmax_magnitude")
ENVS = {"v": "iid", "h": "label_split"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(p, DEFAULT_CONFIG)
    p.add_argument("--env", choices=sorted(ENVS), help="v = IID clients, h = labels 0-4 / 5-9")
    p.add_argument(
        "--method",
        default=None,
        help=f"merge method (any fedssl.aggregation method) or 'all' = {', '.join(ALL)}",
    )
    p.add_argument(
        "--centralized",
        type=int,
        metavar="EPOCHS",
        help="instead: train one model on all clients' data for EPOCHS epochs",
    )
    return p.parse_args(argv)


def env_overrides(args) -> list[str]:
    return [f"data.partition={ENVS[args.env]}"] if args.env else []


def overrides(args) -> list[str]:
    return run_overrides(args) + env_overrides(args)


def main(argv=None) -> int:
    args = parse_args(argv)
    from fedssl.federation.simulation import preflight, simulate
    from fedssl.federation.strategy import FederationFailed

    try:
        if args.resume:
            cfg, _ = resolve_config(args, env_overrides(args))
            if args.print_config:
                print_config(cfg)
                return 0
            simulate(cfg, resume=True, verbose=args.verbose)
            print(f"[fedssl] metrics: {cfg.run_dir() / 'metrics.csv'}")
            return 0
        base = load_config(args.config, overrides(args))
        if args.print_config:
            print_config(base)
            return 0
        if args.centralized:
            from fedssl import runtime

            runtime.resolve(base)
        else:
            preflight(base)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FederationFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    env = {v: k for k, v in ENVS.items()}.get(base.data.partition, base.data.partition)

    if args.centralized:
        from fedssl.centralized import train_centralized
        from fedssl.runs import RunExistsError, claim_run_dir

        name = args.name or f"{base.name}-{env}-centralized"
        out = Path(base.out_dir) / name
        try:
            claim_run_dir(out, overwrite=args.overwrite)
        except RunExistsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        out.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        hist = train_centralized(base, args.centralized)
        (out / "metrics.json").write_text(json.dumps(hist, indent=1))
        print(
            f"[fedssl] centralized: final test_acc={hist[-1]['test_acc']:.4f} "
            f"({time.perf_counter() - t:.0f}s); {out / 'metrics.json'}"
        )
        return 0

    methods = ALL if args.method == "all" else [args.method or base.federation.method]
    runs = {}
    from fedssl.aggregation import resolve_method
    from fedssl.runs import RunDir, RunExistsError, claim_run_dir, holds_run

    cfgs = []
    for method in methods:
        try:
            resolve_method(method)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        cfg = load_config(args.config, overrides(args) + [f"federation.method={method}"])
        prefix = args.name or f"{cfg.name}-{env}"
        cfg.name = f"{prefix}-{method}" if (args.method == "all" or not args.name) else args.name
        cfgs.append((method, cfg))
    taken = [str(c.run_dir()) for _, c in cfgs if holds_run(c.run_dir())]
    if taken and not args.overwrite:  # every run checked before the first one starts
        err = RunExistsError(
            f"{', '.join(taken)} already hold(s) a run; continue one with --resume RUN_DIR, "
            "choose another --name, or pass --overwrite to move the old runs aside (kept)"
        )
        print(f"error: {err}", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    for method, cfg in cfgs:
        aside = claim_run_dir(cfg.run_dir(), overwrite=args.overwrite)
        if aside is not None:
            print(f"[fedssl] the earlier {cfg.name} is kept at {aside}", flush=True)
        t = time.perf_counter()
        try:
            simulate(cfg, verbose=args.verbose)
        except FederationFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
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
        summary = Path(base.out_dir) / f"{args.name or base.name + '-' + env}-summary.md"
        summary.write_text(
            f"# {summary.stem}\n\nwall time {time.perf_counter() - t_all:.0f}s\n\n{table}\n"
        )
        print(table)
        print(f"[fedssl] summary: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
