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
import sys
from pathlib import Path

from fedssl.cli import add_run_args, exit_code, print_config, resolve_config, run_overrides
from fedssl.config import ConfigError, load_config
from fedssl.domains import Count, option

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
        type=option(Count),
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
    return exit_code(lambda: _main(args))


def _main(args: argparse.Namespace) -> int | None:
    from fedssl.federation.preflight import preflight
    from fedssl.federation.simulation import simulate

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
    backend = None
    if args.centralized:
        from fedssl import runtime

        runtime.resolve(base)
    else:
        backend = preflight(base)  # the methods' runs differ only in federation.method
    from fedssl.data.client_tensors import check_splits

    check_splits(base.data)  # the data exists and splits as asked, before anything starts
    env = {v: k for k, v in ENVS.items()}.get(base.data.partition, base.data.partition)

    from fedssl.experiments import merges
    from fedssl.runs import claim_run_dir, holds_run

    if args.centralized:
        out = Path(base.out_dir) / (args.name or f"{base.name}-{env}-centralized")
        claim_run_dir(out, overwrite=args.overwrite, resumable=False)
        merges.run_centralized(base, args.centralized, out)
        return 0
    from fedssl.aggregation import resolve_method

    methods = ALL if args.method == "all" else [args.method or base.federation.method]
    cfgs = []
    for method in methods:
        try:
            resolve_method(method)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        cfg = load_config(args.config, overrides(args) + [f"federation.method={method}"])
        prefix = args.name or f"{cfg.name}-{env}"
        cfg.name = f"{prefix}-{method}" if (args.method == "all" or not args.name) else args.name
        cfgs.append((method, cfg))
    taken = [str(c.run_dir()) for _, c in cfgs if holds_run(c.run_dir())]
    if taken and not args.overwrite:  # every run checked before the first one starts
        raise ConfigError(
            f"{', '.join(taken)} already hold(s) a run; continue one with --resume RUN_DIR, "
            "choose another --name, or pass --overwrite to move the old runs aside (kept)"
        )
    summary = Path(base.out_dir) / f"{args.name or base.name + '-' + env}-summary.md"
    merges.run_methods(cfgs, summary, args.overwrite, args.verbose, backend)


if __name__ == "__main__":
    sys.exit(main())
