"""Weights & Biases adapter: one small interface, a no-op when tracking is disabled.

Mode ``auto`` logs online when credentials exist (``WANDB_API_KEY`` or a ``~/.netrc`` entry for
api.wandb.ai) and offline otherwise; offline runs land in ``<run dir>/wandb/offline-run-*`` and
can be uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["Tracker", "resolve_mode"]

log = logging.getLogger(__name__)


def resolve_mode(mode: str) -> str:
    """Turn ``auto`` into ``online`` or ``offline``; pass the others through."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_netrc = netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    return "online" if os.environ.get("WANDB_API_KEY") or has_netrc else "offline"


class Tracker:
    """Log metrics of one run to W&B (or nowhere when disabled).

    Args:
        mode: ``auto`` | ``online`` | ``offline`` | ``disabled``.
        project: W&B project.
        name: run name.
        run_dir: W&B files go under ``run_dir/wandb``.
        config: the resolved config, stored with the run.
        run_id: resume this W&B run (after ``--resume``).
    """

    def __init__(
        self,
        mode: str,
        project: str,
        name: str,
        run_dir: Path,
        config: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ):
        self.mode = resolve_mode(mode)
        self.run = None
        if self.mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=project,
            name=name,
            dir=str(run_dir),
            mode=self.mode,
            config=dict(config or {}),
            id=run_id,
            resume="allow" if run_id else None,
            reinit="finish_previous",
        )
        log.info("W&B %s run %s in %s", self.mode, self.run.id, run_dir / "wandb")

    @property
    def run_id(self) -> str | None:
        """The W&B run id (None when disabled)."""
        return None if self.run is None else self.run.id

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log one step's metrics."""
        if self.run is not None:
            self.run.log(dict(metrics), step=step)

    def finish(self) -> None:
        """Close the run (flushes offline files)."""
        if self.run is not None:
            self.run.finish()
            self.run = None
