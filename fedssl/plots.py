"""PNG plots of per-round metrics (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_curves"]


def plot_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "round",
    ylabel: str = "accuracy",
    levels: Mapping[str, tuple[float, str]] | None = None,
) -> Path:
    """Plot named ``(x, y)`` series as lines and save a PNG; returns the path.

    ``levels``: ``{label: (y, series name)}`` dashed horizontal lines (a baseline), each in the
    colour of the series it belongs to."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    colours = {}
    for name, (x, y) in series.items():
        if len(x):
            (line,) = ax.plot(list(x), list(y), marker="o", markersize=3, label=name)
            colours[name] = line.get_color()
    for label, (y, of) in (levels or {}).items():
        ax.axhline(y, linestyle="--", linewidth=1, color=colours.get(of, "grey"), label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p
