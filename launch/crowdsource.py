"""Crowd-sourced training through the hub (paper 002), against a real hub server process.

    python launch/crowdsource.py                       # 10 participants, 20 classes, 10 versions
    python launch/crowdsource.py --versions 3 --per-round 1000 --model mlp

The scenario (paper 002: 10 participants of two datasets learn one 20-class model through pull
/ train / push / merge, with a centralized reference on the same images) and what the run
directory holds: :mod:`fedssl.experiments.crowdsource`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedssl.domains import Count, Momentum, Rate, Seed, option


def parse_args(argv=None) -> argparse.Namespace:
    from fedssl.cli import add_overwrite

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--name", default="crowdsource")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--participants", type=option(Count), default=10, help="half per dataset")
    p.add_argument("--versions", type=option(Count), default=10, help="merges (rounds) to run")
    p.add_argument(
        "--per-round", type=option(Count), default=6400, help="images per participant and round"
    )
    p.add_argument("--epochs", type=option(Count), default=1, help="local epochs per round")
    p.add_argument("--model", choices=["paper_cnn", "mlp"], default="paper_cnn")
    p.add_argument("--width", type=option(Count), default=32)
    p.add_argument("--hidden", type=option(Count), default=128)
    p.add_argument("--lr", type=option(Rate), default=0.05)
    p.add_argument("--momentum", type=option(Momentum), default=0.9)
    p.add_argument("--batch-size", type=option(Count), default=64)
    p.add_argument(
        "--parallel", type=option(Count), default=2, help="participants training at once"
    )
    p.add_argument("--seed", type=option(Seed), default=0)
    p.add_argument("--data-root", help="Fashion-MNIST idx folder (default: the usual places)")
    p.add_argument("--db", help="hub store URL (default: sqlite in the run directory)")
    p.add_argument("--no-central", action="store_true", help="skip the centralized reference")
    p.add_argument(
        "--runtime",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="runtime settings of local training, e.g. accelerator=cpu precision=32-true",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved settings and exit"
    )
    add_overwrite(p)
    return p.parse_args(argv)


def runtime_config(pairs: list[str]):
    """The ``runtime`` section from ``--runtime KEY=VALUE`` pairs (validated like a config)."""
    from fedssl.config import RuntimeConfig, apply_overrides, from_dict

    return from_dict(RuntimeConfig, apply_overrides({}, pairs), prefix="runtime.")


def main(argv=None) -> int:
    args = parse_args(argv)
    from fedssl import runtime
    from fedssl.config import ConfigError
    from fedssl.data.datasets import DatasetNotFoundError
    from fedssl.experiments import crowdsource
    from fedssl.runs import RunExistsError, claim_run_dir

    try:
        if args.participants < 2 or args.participants % 2:
            raise ConfigError("--participants must be even (half per dataset)")
        args.runtime_cfg = runtime_config(args.runtime)
        if args.print_config:
            from fedssl.cli import print_config

            print_config(crowdsource.settings(args), args.runtime_cfg)
            return 0
        runtime.resolve(args.runtime_cfg)
        data, notes = crowdsource.load_data(args.data_root)
        run = Path(args.out_dir) / args.name
        aside = claim_run_dir(run, overwrite=args.overwrite, resumable=False)
    except (ConfigError, DatasetNotFoundError, RunExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if aside is not None:
        print(f"[crowd] the earlier run is kept at {aside}", flush=True)
    crowdsource.run(args, data, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
