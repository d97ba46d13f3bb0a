"""Stage one (paper 003): federated self-supervised pretraining of a shared backbone, on Flower.

Examples::

    python launch/pretrain.py                 # embedded default: Fashion-MNIST + MNIST, offline
    python launch/pretrain.py --rounds 2 --set data.max_per_client=1000   # a quick look
    python launch/pretrain.py --config configs/pretrain/paper.yaml \\
        --set data.roots.intel_scene=/data/intel      # the paper: ResNet-50, Flowers102 + Intel
    python launch/pretrain.py --resume runs/pretrain-default   # continue after an interruption
    python launch/pretrain.py --set ssl.method=byol ssl.client_update=fedema   # BYOL + FedEMA

Every client trains the configured SSL method (``ssl.method``: simclr, byol, simsiam, moco,
vicreg, barlowtwins, dino; timm backbone, lightly heads/losses/views) on its unlabeled images;
the travelling parts (``ssl.travel``; by default the backbone and projection head, plus the
prediction head for BYOL / SimSiam) are merged by FedAvg each round. Each round every client
scores the merged backbone by kNN on its own labeled data, beside kNN on raw pixels. The run
directory holds ``backbone.safetensors`` (the merged backbone, architecture in its metadata),
``config.yaml``, ``metrics.csv``, ``accuracy.png``, ``partition.json``, ``checkpoints/`` and the
W&B files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedssl.cli import add_run_args, exit_code, print_config, resolve_config
from fedssl.config import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "default.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(p, DEFAULT_CONFIG)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: _main(args))


def _main(args: argparse.Namespace) -> int | None:
    cfg, resume = resolve_config(args)
    if args.print_config:
        print_config(cfg)
        return 0
    if cfg.experiment != "pretrain":
        raise ConfigError(f"experiment: {cfg.experiment!r}; launch/pretrain.py runs pretrain")
    from fedssl.experiments.pretrain import check_data, run
    from fedssl.federation.preflight import preflight
    from fedssl.runs import claim_run_dir

    backend = preflight(cfg)  # device, precision, Ray resources, backbone: before anything starts
    lines = check_data(cfg)
    aside = claim_run_dir(cfg.run_dir(), resume, args.overwrite)  # the last check
    if aside is not None:
        print(f"[fedssl] the earlier run is kept at {aside}", flush=True)
    run(cfg, lines, resume=resume, verbose=args.verbose, backend=backend)


if __name__ == "__main__":
    sys.exit(main())
