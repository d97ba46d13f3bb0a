"""Summarise label-scarce comparisons over several runs (seeds, stage ones): per label budget the
gain of one method over another on every client of every run, its mean and its lowest, and the
issue's two stage-two checks — the method at or above the baseline on every client at every
budget up to N per class, and the mean gain at one budget against a target. The "over the three
seeds" figures of docs/results/multitask.md come from here.

    python benchmarks/label_scarce_summary.py S0.json S1.json S2.json
    python benchmarks/label_scarce_summary.py S*.json --method 'FL+SSL (full)' --target 5=10

Each file is the JSON that ``launch/compare.py --labels ... --results PAGE.md`` writes beside its
page (``PAGE.json``). Scores are the paper's (``unlabeled``: the client's unlabeled images) and
the dataset's test split, shown as ``unlabeled / test``, in points (%). Prints markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCORES = ("unlabeled_acc", "test_acc")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="launch/compare.py JSON files")
    p.add_argument("--method", default="FL+SSL (linear)", help="the method whose gain is shown")
    p.add_argument("--baseline", default="CL", help="the method it is measured against")
    p.add_argument(
        "--upto",
        type=int,
        default=20,
        help="check method >= baseline on every client at every budget up to this many labels "
        "per class (20)",
    )
    p.add_argument(
        "--target",
        default="5=10",
        metavar="LABELS=POINTS",
        help="check the mean gain at LABELS per class against POINTS (5=10)",
    )
    a = p.parse_args(argv)
    if a.upto < 1:
        p.error(f"--upto takes a number of labels per class (1 and up), got {a.upto}")
    labels, sep, points = a.target.partition("=")
    try:
        a.target = (int(labels), float(points))
        if not sep or a.target[0] < 1:
            raise ValueError
    except ValueError:
        p.error(f"--target takes LABELS=POINTS, e.g. 5=10 (got {a.target!r})")
    return a


def load(path: Path, methods: tuple[str, ...]) -> dict:
    """``{"clients": [...], "acc": {(labels, method, client): (unlabeled, test)}}`` of one file.

    Raises:
        ValueError: not a compare JSON, or a method it has no rows for (the message lists
            those it has).
    """
    try:
        res = json.loads(path.read_text())
        rows, clients = res["rows"], list(res["clients"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a launch/compare.py JSON ({err})") from err
    acc = {
        (int(r["labels_per_class"]), r["method"], r["client"]): tuple(100 * r[s] for s in SCORES)
        for r in rows
        if all(r.get(s) is not None for s in SCORES)
    }
    have = sorted({m for _, m, _ in acc})
    for m in methods:
        if m not in have:
            raise ValueError(f"{path} has no rows for {m!r}; it has {', '.join(have)}")
    return {"clients": clients, "acc": acc}


def gains(runs: list[dict], method: str, baseline: str) -> dict[int, list[list[tuple]]]:
    """``{labels: [[(unlabeled gain, test gain) per client] per run]}`` for every budget that
    every run scored both methods on, on every one of its clients."""
    budgets = None
    for run in runs:
        here = {
            b
            for b, m, _ in run["acc"]
            if all((b, x, c) in run["acc"] for x in (method, baseline) for c in run["clients"])
        }
        budgets = here if budgets is None else budgets & here
    out = {}
    for b in sorted(budgets or (), key=lambda b: (b == 0, b)):  # 0 (every label) last
        out[b] = [
            [
                tuple(
                    m - s
                    for m, s in zip(
                        run["acc"][(b, method, c)], run["acc"][(b, baseline, c)], strict=True
                    )
                )
                for c in run["clients"]
            ]
            for run in runs
        ]
    return out


def mean_gain(per_run: list[list[tuple]], score: int) -> float:
    """The mean over runs of each run's mean over its clients."""
    return sum(sum(g[score] for g in r) / len(r) for r in per_run) / len(per_run)


def render(runs: list[dict], names: list[str], a) -> str:
    table = gains(runs, a.method, a.baseline)
    if not table:
        raise ValueError(f"no label budget has {a.method!r} and {a.baseline!r} in every file")
    clients = runs[0]["clients"]
    same = all(r["clients"] == clients for r in runs)
    lines = [
        f"{a.method} - {a.baseline}, points, unlabeled / test; per client one value per run "
        f"({', '.join(names)}).",
        "",
        "| labels per class | "
        + (" | ".join(clients) if same else "clients (per run)")
        + " | mean | lowest (unlabeled) | lowest (test) |",
        "|---|" + ("---|" * len(clients) if same else "---|") + "---:|---:|---:|",
    ]
    for b, per_run in table.items():
        if same:
            cells = [
                ", ".join(f"{r[i][0]:+.2f} / {r[i][1]:+.2f}" for r in per_run)
                for i in range(len(clients))
            ]
        else:
            cells = ["; ".join(", ".join(f"{g[0]:+.2f}" for g in r) for r in per_run)]
        low = [min(g[s] for r in per_run for g in r) for s in (0, 1)]
        lines.append(
            f"| {b or 'all'} | "
            + " | ".join(cells)
            + f" | {mean_gain(per_run, 0):+.2f} / {mean_gain(per_run, 1):+.2f}"
            + f" | {low[0]:+.2f} | {low[1]:+.2f} |"
        )
    n = len(runs)
    lines.append("")
    upto = [b for b in table if 0 < b <= a.upto]
    for s, score in enumerate(("unlabeled", "test")):
        held = [
            all(g[s] >= 0 for b in upto for g in table[b][i]) for i in range(n)
        ]  # per run: every budget <= upto, every client
        lines.append(
            f"- {a.method} >= {a.baseline} on every client at every budget up to {a.upto} per "
            f"class ({', '.join(map(str, upto)) or 'none scored'}), {score}: "
            f"**{sum(held)} of {n} runs**"
            + (
                ""
                if all(held)
                else f" (not: {', '.join(names[i] for i in range(n) if not held[i])})"
            )
        )
    b, want = a.target
    if b in table:
        got = [mean_gain(table[b], s) for s in (0, 1)]
        verdict = ", ".join(
            f"{score} {'met' if g >= want else 'not met'}"
            for score, g in zip(("unlabeled", "test"), got, strict=True)
        )
        lines.append(
            f"- mean gain at {b} per class over the {n} runs: **{got[0]:+.2f} / {got[1]:+.2f}** "
            f"(target {want:+g}: {verdict}); per run "
            + ", ".join(f"{mean_gain([r], 0):+.2f}" for r in table[b])
            + " (unlabeled)"
        )
    else:
        lines.append(f"- no run scored {b} labels per class: the target is not checked")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        runs = [load(p, (a.method, a.baseline)) for p in a.results]
        text = render(runs, [p.stem for p in a.results], a)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
