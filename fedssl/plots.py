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
) -> Path:
    """Plot named ``(x, y)`` series as lines and save a PNG; returns the path."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name, (x, y) in series.items():
        if len(x):
            ax.plot(list(x), list(y), marker="o", markersize=3, label=name)
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
