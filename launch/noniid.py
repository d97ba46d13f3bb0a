"""Non-IID federated learning (paper 004) on Flower: dominant-label clients, an MLP, and the
centralized baseline beside it.

Examples::

    python launch/noniid.py                          # the paper: 10 clients, p=0.55, 100 rounds
    python launch/noniid.py --strategy fedprox --set train.prox_mu=0.01
    python launch/noniid.py --strategy fedadam --set federation.server_opt_args.eta=0.01
    python launch/noniid.py --p 1.0                  # one digit per client
    python launch/noniid.py --dirichlet 0.1          # Dirichlet(alpha) label skew instead
    python launch/noniid.py --dataset fashion_mnist  # the same protocol on Fashion-MNIST
    python launch/noniid.py --no-centralized --rounds 20

Strategies (``--strategy``): ``fedavg``; ``fedprox`` (proximal term in the client's Lightning
module, ``train.prox_mu``, 0.01 unless set); ``fedavgm`` (server momentum,
``federation.server_momentum``, 0.9 unless set); ``fedadam`` / ``fedyogi`` (Flower's server
optimizers over the merge, ``federation.server_opt_args``); ``median`` and ``trimmed_mean``
(fedssl's robust merges). ``--fraction`` samples that share of the clients each round.

What the run directory holds: :mod:`fedssl.experiments.noniid`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedssl.cli import add_run_args, exit_code, print_config, resolve_config
from fedssl.config import ConfigError
from fedssl.experiments.noniid import STRATEGIES, run_name

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "noniid" / "paper.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(p, DEFAULT_CONFIG)
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default="fedavg")
    p.add_argument("--dataset", choices=["mnist", "fashion_mnist"], help="default: the config's")
    p.add_argument("--p", type=float, help="dominant-label share (0.1 = IID, 1.0 = one label)")
    p.add_argument("--dirichlet", type=float, metavar="ALPHA", help="Dirichlet label skew")
    p.add_argument("--fraction", type=float, help="share of clients sampled per round")
    p.add_argument("--clients", type=int, help="number of clients")
    p.add_argument("--lr", type=float, help="client learning rate")
    p.add_argument("--batch-size", type=int, help="client mini-batch size")
    p.add_argument("--no-centralized", action="store_true", help="skip the centralized baseline")
    return p.parse_args(argv)


def overrides(args: argparse.Namespace) -> list[str]:
    """Dotted overrides for this script's options, after the common ones (strategy defaults
    only where ``--set`` is silent)."""
    fixed, defaults = STRATEGIES[args.strategy]
    ov = list(fixed)
    given = {o.split("=", 1)[0] for o in args.set}
    ov += [f"{k}={v}" for k, v in defaults.items() if k not in given]
    if args.dataset:
        ov.append(f"data.name={args.dataset}")
    if args.p is not None and args.dirichlet is not None:
        raise ConfigError("--p and --dirichlet are two different skews: give one")
    if args.p is not None:
        ov += ["data.partition=dominant_label", f"data.dominant_p={args.p}"]
    if args.dirichlet is not None:
        ov += ["data.partition=dirichlet", f"data.dirichlet_alpha={args.dirichlet}"]
    if args.fraction is not None:
        ov.append(f"federation.fraction_train={args.fraction}")
    if args.clients is not None:
        ov += [f"data.num_clients={args.clients}", f"federation.min_clients={args.clients}"]
    if args.lr is not None:
        ov.append(f"train.lr={args.lr}")
    if args.batch_size is not None:
        ov.append(f"train.batch_size={args.batch_size}")
    return ov


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: _main(args))


def _main(args: argparse.Namespace) -> int | None:
    cfg, resume = resolve_config(args, overrides(args))
    if not resume:
        cfg.name = run_name(cfg, args.strategy, args.name)
    if args.print_config:
        print_config(cfg)
        return 0
    if cfg.experiment != "supervised":
        raise ConfigError(
            f"experiment: {cfg.experiment!r}; launch/noniid.py runs supervised federated "
            "training (experiment: supervised)"
        )
    from fedssl.data.client_tensors import check_splits
    from fedssl.experiments import noniid
    from fedssl.federation.preflight import preflight
    from fedssl.runs import claim_run_dir

    backend = preflight(cfg)
    check_splits(cfg.data)  # the data exists and splits as asked
    histogram = noniid.histogram_table(cfg)
    aside = claim_run_dir(cfg.run_dir(), resume, args.overwrite)
    if aside is not None:
        print(f"[fedssl] the earlier run is kept at {aside}", flush=True)
    noniid.run(
        cfg, args.strategy, resume, not args.no_centralized, args.verbose, histogram, backend
    )


if __name__ == "__main__":
    sys.exit(main())
