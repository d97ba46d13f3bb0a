"""Paper 003's Table 2: CL against FL+SSL per client, written to docs/results/multitask.md.

Examples::

    python launch/compare.py                  # offline pair (Fashion-MNIST + MNIST), ~45 min CPU
    python launch/compare.py --pretrain runs/pretrain-default --labels 0 20
    python launch/compare.py --pretrain-config configs/pretrain/paper.yaml \\
        --set data.roots.intel_scene=/data/intel     # the paper's clients (GPU advised)

The methods, label settings and scores are described in :mod:`fedssl.experiments.table2`.
"""

from __future__ import annotations

import argparse
import sys

import fedssl  # noqa: F401  (allocator settings before torch)
from fedssl.cli import exit_code
from fedssl.domains import Count, Size, option
from fedssl.experiments import table2


def parse_args(argv=None) -> argparse.Namespace:
    d = table2.Options()
    p = argparse.ArgumentParser(
        description=table2.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pretrain", help="a finished stage-one run to use (default: run one)")
    p.add_argument("--pretrain-config", default=d.pretrain_config)
    p.add_argument(
        "--labels",
        nargs="+",
        default=[str(n) for n in d.labels],
        help="labeled images per class, comma- or space-separated; all (or 0): the whole "
        "labeled part (default: all 20; the label-scarce protocol: 1,5,10,20,all)",
    )
    p.add_argument(
        "--steps", type=option(Count), default=d.steps, help="optimisation steps per head"
    )
    p.add_argument("--methods", nargs="+", choices=list(table2.METHODS), default=d.methods)
    p.add_argument("--out-dir", default=d.out_dir, help="run directories")
    p.add_argument("--results", default=d.results)
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for stage one (and the heads' data section)",
    )
    p.add_argument(
        "--finetune-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for every head, e.g. finetune.lr=0.05",
    )
    p.add_argument(
        "--jobs",
        type=option(Size),
        default=d.jobs,
        help="heads trained side by side, each in its own process (default 0: one per "
        "client, at most one per CPU; 1: one after another in this process)",
    )
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default=d.wandb)
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved stage-one and head configs (YAML, runtime included) and exit",
    )
    return p.parse_args(argv)  # fmt: skip


def options(args: argparse.Namespace) -> table2.Options:
    return table2.Options(**{k: v for k, v in vars(args).items() if k != "print_config"})


def main(argv=None) -> int:
    args = parse_args(argv)
    command = " ".join(["python launch/compare.py", *(argv if argv is not None else sys.argv[1:])])
    return exit_code(lambda: _main(args, command))


def _main(args: argparse.Namespace, command: str) -> int | None:
    opts = options(args)  # a bad --labels or --methods: refused before anything starts
    if args.print_config:
        return table2.print_configs(opts)
    table2.run(opts, command)


if __name__ == "__main__":
    sys.exit(main())
