"""Markdown tables from run directories (the papers' Table 3 / Table 4 layout)."""

from __future__ import annotations

from collections.abc import Mapping

from fedssl.runs import RunDir

__all__ = ["merge_table", "pct"]


def pct(x: float | None) -> str:
    """``0.9373`` -> ``93.73``; missing -> ``-``."""
    return "-" if x is None else f"{100 * x:.2f}"


def merge_table(runs: Mapping[str, RunDir], locals_from: str | None = None) -> str:
    """Round | local accuracy of each client | merged accuracy per method.

    Args:
        runs: method name -> its run directory (one trajectory per method).
        locals_from: the method whose local accuracies are shown (default: the first).
    """
    methods = list(runs)
    if not methods:
        return ""
    loc = locals_from or methods[0]
    by_method = {m: {r["round"]: r for r in rd.metrics()} for m, rd in runs.items()}
    rounds = sorted({r for rows in by_method.values() for r in rows if r > 0})
    clients = sorted(
        {k for row in by_method[loc].values() for k in row if k.startswith("local_acc_c")}
    )
    head = (
        ["round"]
        + [f"local acc client {int(c[-1]) + 1} ({loc} run)" for c in clients]
        + [f"merged {m}" for m in methods]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rounds:
        row = by_method[loc].get(r, {})
        cells = (
            [str(r)]
            + [pct(row.get(c)) for c in clients]
            + [pct(by_method[m].get(r, {}).get("merged_acc")) for m in methods]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
