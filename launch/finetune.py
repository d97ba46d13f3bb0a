"""Stage two (paper 003): a client's task-specific linear head on the shared stage-one backbone.

Examples::

    python launch/finetune.py --client fashion_mnist          # after python launch/pretrain.py
    python launch/finetune.py --client mnist --mode partial   # also retrain the last stage
    python launch/finetune.py --client mnist --labels-per-class 20   # label-scarce
    python launch/finetune.py --client mnist --backbone none --mode full   # the "CL" baseline
    python launch/finetune.py --client flower102 --backbone runs/pretrain-paper \\
        --set data.roots.flower102=/data/flowers
    python launch/finetune.py --federated --mode partial --rounds 5   # every client at once

The head trains on the client's labeled part and is scored on its unlabeled part
(``unlabeled_acc``: paper 003's protocol) and on the dataset's test split (``test_acc``). The
split is the stage-one run's (its ``config.yaml``). Results: ``runs/<name>/results.json`` and
``head.safetensors`` (head, plus the fine-tuned backbone unless ``--mode linear``).

``--federated`` trains all clients' heads together on Flower (simulation): the trainable part of
the backbone is merged by FedAvg each round, the heads never leave their clients (each is kept in
the client's Flower ``Context`` state and saved as ``runs/<name>/heads/client<i>-<dataset>``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedssl.cli import add_overwrite, add_print_config, exit_code, print_config
from fedssl.config import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "finetune" / "default.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--client", help="dataset name (or position) of the client: fashion_mnist, ...")
    p.add_argument("--federated", action="store_true", help="all clients at once, on Flower")
    p.add_argument(
        "--backbone",
        help="stage-one run dir or backbone file; none: random init; pixels: raw pixels",
    )
    p.add_argument("--mode", choices=["linear", "partial", "full"])
    p.add_argument("--epochs", type=int, help="training epochs (federated: per round)")
    p.add_argument("--rounds", type=int, help="--federated: rounds")
    p.add_argument("--labels-per-class", type=int, help="use only this many labels per class")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="default: %(default)s")
    p.add_argument("--name", help="run name (default: finetune-<client>-<mode>)")
    p.add_argument("--out-dir", help="parent of run directories (default: runs)")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--verbose", action="store_true", help="--federated: Flower's and Ray's logs")
    add_overwrite(p)
    add_print_config(p)
    args = p.parse_args(argv)
    if not args.federated and args.client is None and not args.print_config:
        p.error("--client is required (or --federated for every client)")
    return args


def overrides(args: argparse.Namespace) -> list[str]:
    ov = list(args.set)
    if args.out_dir:
        ov.append(f"out_dir={args.out_dir}")
    if args.backbone is not None:
        ov.append(f"finetune.backbone={args.backbone}")
    if args.mode:
        ov.append(f"finetune.mode={args.mode}")
    elif args.federated:
        ov.append("finetune.mode=partial")
    if args.epochs is not None:
        ov.append(f"finetune.{'local_epochs' if args.federated else 'epochs'}={args.epochs}")
    if args.rounds is not None:
        ov.append(f"federation.rounds={args.rounds}")
    if args.labels_per_class is not None:
        ov.append(f"finetune.labels_per_class={args.labels_per_class}")
    if args.wandb:
        ov.append(f"tracking.wandb={args.wandb}")
    return ov


def name_run(cfg, args) -> None:
    """The run name: ``--name``, or one that says which client, mode and kind of run."""
    f = cfg.finetune
    if args.federated:
        cfg.name = args.name or f"finetune-federated-{f.mode}"
        return
    client = args.client if args.client is not None else "CLIENT"
    cl = {"none": "-cl", "pixels": "-pixels"}.get(f.backbone.lower(), "")
    cfg.name = args.name or f"finetune-{client}-{f.mode}{cl}"


def keep_earlier(cfg, args) -> None:
    """Refuse to start over an earlier run (or move it aside with ``--overwrite``)."""
    from fedssl.runs import claim_run_dir

    aside = claim_run_dir(cfg.run_dir(), overwrite=args.overwrite)
    if aside is not None:
        print(f"[fedssl] the earlier run is kept at {aside}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: _main(args))


def _main(args: argparse.Namespace) -> int | None:
    from fedssl.experiments import finetune as stage_two
    from fedssl.methods.finetune import finetune_config

    try:
        cfg, _ = finetune_config(args.config, overrides(args))
        name_run(cfg, args)
        if args.print_config:
            print_config(cfg)
            return 0
        built = backend = None
        if args.federated:
            backend = stage_two.check_federated(cfg)
        else:
            built = stage_two.check_client(cfg, args.client)
        keep_earlier(cfg, args)  # also: a new run never starts from an earlier run's heads
    except (FileNotFoundError, ValueError) as err:  # a backbone or head file that cannot be used
        raise ConfigError(str(err)) from err
    if args.federated:
        stage_two.run_federated(cfg, verbose=args.verbose, backend=backend)
    else:
        stage_two.run_client(cfg, args.client, built)


if __name__ == "__main__":
    sys.exit(main())
