"""Summarise stage-one runs from their metrics: per client the kNN accuracy after the last
round, the mean and range of the last N evaluated rounds, the best round, raw pixels and the
first round above them, and optionally the accuracy at given rounds and the first round at or
above a target and how many rounds of the window are. The "last ten rounds" and "first round
above" figures of docs/results/stage-one.md come from here.

    python benchmarks/run_summary.py runs/pretrain-default [more run directories]
    python benchmarks/run_summary.py RUN --at 55 100 --target fashion_mnist=0.80 mnist=0.95
    python benchmarks/run_summary.py RUN_200_ROUNDS RUN_60_ROUNDS --until 60   # at equal rounds

Each run directory needs its ``config.yaml`` (the client names) and ``metrics.jsonl`` (what
``launch/pretrain.py`` writes after every round, so a run still going can be summarised too).
Prints one markdown table, a row per run and client; minutes are the sum of the rounds' wall
times (``round_s``), on whatever machine and load the run had.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="stage-one run directories")
    p.add_argument("--last", type=int, default=10, help="evaluated rounds in the window (10)")
    p.add_argument(
        "--at", type=int, nargs="*", default=[], help="also the accuracy after these rounds"
    )
    p.add_argument(
        "--until",
        type=int,
        default=0,
        metavar="ROUND",
        help="read every run as if it had stopped after this round (runs of different lengths "
        "compared at equal rounds); 0: as they are",
    )
    p.add_argument(
        "--target",
        nargs="*",
        default=[],
        metavar="DATASET=ACC",
        help="also the first round at or above ACC for the client holding DATASET",
    )
    args = p.parse_args(argv)
    if args.last < 1:
        p.error("--last must be at least 1")
    if any(r < 1 for r in args.at):
        p.error("--at takes round numbers (1 and up)")
    if args.until < 0:
        p.error("--until takes a round number (1 and up; 0: every round)")
    if args.until and any(r > args.until for r in args.at):
        p.error(f"--at {max(args.at)} is after --until {args.until}")
    targets = {}
    for item in args.target:
        name, sep, value = item.partition("=")
        try:
            targets[name] = float(value) if sep and name else None
        except ValueError:
            targets[name] = None
        if targets[name] is None:
            p.error(f"--target {item!r}: expected DATASET=ACC, e.g. fashion_mnist=0.80")
    args.target = targets
    for run in args.runs:
        for need in ("config.yaml", "metrics.jsonl"):
            if not (run / need).is_file():
                p.error(f"{run} is not a stage-one run directory (no {need})")
    return args


def rows_for(
    run: Path, last: int, at: list[int], targets: dict[str, float], until: int = 0
) -> list[list[str]]:
    """The table's rows for one run: one per client it scored (``until`` > 0: from its rounds
    up to that one only)."""
    from fedssl.config import load_config
    from fedssl.experiments.pretrain import knn_tracks
    from fedssl.runs import RunDir

    cfg = load_config(run / "config.yaml")
    if cfg.experiment != "pretrain":
        raise ValueError(f"{run}: a {cfg.experiment!r} run, not stage one (pretrain)")
    unknown = set(targets) - set(cfg.data.clients)
    if unknown:
        raise ValueError(
            f"--target {', '.join(sorted(unknown))}: no client of {run} holds it "
            f"(data.clients: {', '.join(cfg.data.clients)})"
        )
    out = []
    rows = [r for r in RunDir(run).metrics() if not until or r["round"] <= until]
    for pid, t in knn_tracks(rows, len(cfg.data.clients)).items():
        name = cfg.data.clients[pid]
        mean, lo, hi, n = t.last(last)
        best, best_round = t.best()
        above = t.first_at_least(t.pixels) if t.pixels is not None else None
        cells = [
            run.name,
            name,
            str(t.rounds[-1]),
            f"{t.minutes():.1f}",
            f"{t.final:.3f}",
            f"{mean:.3f} ({lo:.3f}-{hi:.3f}, {n})",
            f"{best:.3f} (round {best_round})",
            "-" if t.pixels is None else f"{t.pixels:.3f}",
            "-" if t.pixels is None else (str(above) if above else "never"),
        ]
        cells += ["-" if t.at(r) is None else f"{t.at(r):.3f}" for r in at]
        if targets:
            level = targets.get(name)
            if level is None:
                cells.append("-")
            else:
                first = t.first_at_least(level)
                held = sum(a >= level for a in t.acc[-last:])
                cells.append(f"{first or 'never'} (>= {level:g}; {held} of the last {n})")
        out.append(cells)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    head = [
        "run",
        "client",
        "rounds",
        "minutes",
        "kNN, last round",
        f"mean of the last {args.last} evaluated (range, n)",
        "best",
        "raw pixels",
        "first round at or above raw pixels",
    ]
    head += [f"after round {r}" for r in args.at]
    if args.target:
        head.append("first round at the target (rounds of the window at it)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if args.until:
        lines.insert(0, f"Every run read up to round {args.until}.\n")
    for run in args.runs:
        try:
            rows = rows_for(run, args.last, args.at, args.target, args.until)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not rows:
            print(f"note: {run} has no evaluated round yet", file=sys.stderr)
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
