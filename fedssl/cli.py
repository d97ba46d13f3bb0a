"""Command-line plumbing shared by the launch scripts: common options, overrides, resume."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fedssl.config import ConfigError, ExperimentConfig, load_config, to_dict

__all__ = [
    "add_run_args",
    "add_overwrite",
    "add_print_config",
    "run_overrides",
    "resolve_config",
    "print_config",
    "runtime_line",
]


def add_run_args(p: argparse.ArgumentParser, default_config: Path) -> None:
    """Options every launch script has: config, rounds, local work, naming, W&B, resume, --set."""
    p.add_argument(
        "--config", default=str(default_config), help="YAML config (default: %(default)s)"
    )
    p.add_argument("--rounds", type=int, help="federated rounds")
    p.add_argument("--local-epochs", type=int, help="local epochs per round")
    p.add_argument(
        "--local-steps", type=int, help="local mini-batches per round (overrides epochs)"
    )
    p.add_argument("--name", help="run name (the directory under --out-dir)")
    p.add_argument("--out-dir", help="parent of run directories (default: runs)")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], help="W&B mode")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue runs/<name> from its last round")
    add_overwrite(p)
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.lr=0.02 federation.rounds=5",
    )
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    add_print_config(p)


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: start anew where a run exists, moving the old one aside (kept)."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start anew where a run exists: the old one is moved to <name>.replaced-<time>",
    )


def add_print_config(p: argparse.ArgumentParser) -> None:
    """``--print-config``: print the resolved config and exit without running."""
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved config (YAML, runtime included) and exit",
    )


def runtime_line(cfg: ExperimentConfig | Any, comment: bool = True) -> str:
    """What the config's runtime section resolves to on this machine, in one line (a YAML
    comment unless ``comment`` is False)."""
    from fedssl import runtime

    machine = runtime.Machine.probe()
    try:
        rt = runtime.resolve(cfg, machine)
    except ConfigError as err:
        line = f"runtime on this machine ({machine.describe()}): not possible: {err}"
    else:
        line = f"runtime on this machine ({machine.describe()}): {rt.summary()}"
    return f"# {line}" if comment else line


def print_config(cfg: ExperimentConfig | dict, runtime_of: Any = None, file=None) -> None:
    """Print a resolved config as YAML, then what its runtime resolves to on this machine.

    Args:
        cfg: an experiment config, or a plain dict (launchers without one).
        runtime_of: the config or ``runtime`` section to resolve (default: ``cfg``).
        file: where to print (default: stdout).
    """
    data = cfg if isinstance(cfg, dict) else to_dict(cfg)
    out = file or sys.stdout
    out.write(yaml.safe_dump(data, sort_keys=False))
    out.write(runtime_line(runtime_of if runtime_of is not None else cfg) + "\n")
    out.flush()


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The dotted overrides the common options stand for (``--set`` first)."""
    ov = list(args.set)
    if args.rounds is not None:
        ov.append(f"federation.rounds={args.rounds}")
    if args.local_epochs is not None:
        ov += [f"train.local_epochs={args.local_epochs}", "train.local_steps=0"]
    if args.local_steps is not None:
        ov.append(f"train.local_steps={args.local_steps}")
    if args.out_dir:
        ov.append(f"out_dir={args.out_dir}")
    if args.wandb:
        ov.append(f"tracking.wandb={args.wandb}")
    return ov


def resolve_config(
    args: argparse.Namespace, extra: list[str] | None = None
) -> tuple[ExperimentConfig, bool]:
    """``(config, resume)``: a resumed run's saved config (plus overrides) or ``--config``'s.

    Raises:
        ConfigError: a bad file, key or value, or a ``--resume`` path that is not a run.
    """
    ov = run_overrides(args) + list(extra or [])
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"{run} is not a run directory (no config.yaml)")
        cfg = load_config(run / "config.yaml", ov)
        cfg.out_dir, cfg.name = str(run.parent), run.name
        return cfg, True
    cfg = load_config(args.config, ov)
    if args.name:
        cfg.name = args.name
    return cfg, False


def exit_code(work: Callable[[], int | None]) -> int:
    """Run a launcher's ``work`` and give the exit code every launcher documents: ``work``'s own
    (0 when it returns None); **2** with ``error: ...`` on stderr for input refused before
    anything started or was written (:class:`ConfigError`, a missing dataset, an existing run);
    **1** with ``error: ...`` for a federation that started and failed (no usable round, or the
    engine died: the run directory keeps every good round)."""
    from fedssl.data.datasets import DatasetNotFoundError
    from fedssl.federation.strategy import FederationFailed
    from fedssl.runs import RunExistsError

    try:
        return work() or 0
    except (ConfigError, DatasetNotFoundError, RunExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FederationFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
