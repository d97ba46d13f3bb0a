"""The run directory ``runs/<name>/``: resolved config, partition manifest, per-round metrics
(CSV + JSON lines), plots, and global checkpoints (safetensors) with the state needed to resume.

Layout::

    runs/<name>/config.yaml          resolved config
    runs/<name>/partition.json       indices + label histogram per client
    runs/<name>/metrics.csv          one row per round (also metrics.jsonl)
    runs/<name>/accuracy.png         curves
    runs/<name>/checkpoints/round_0003.safetensors
    runs/<name>/state.json           {"round": 3, "checkpoint": ..., "wandb_id": ...}
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "RunDir",
    "RunExistsError",
    "holds_run",
    "claim_run_dir",
    "write_safetensors",
    "write_text_atomic",
]

#: Files whose presence means a directory holds a run that a fresh start would clobber.
RUN_MARKERS = (
    "state.json", "metrics.jsonl", "metrics.csv", "metrics.json", "results.json",
    "crowdsource.json", "hub.db",
)  # fmt: skip


class RunExistsError(ValueError):
    """A new run was asked for in a directory that already holds one."""


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` holds (part of) an earlier run: metrics, resume state or results."""
    p = Path(path)
    return p.is_dir() and any((p / m).exists() for m in RUN_MARKERS)


def _describe(path: Path) -> str:
    try:
        st = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return "a run"
    return f"a run that completed round {st['round']}" if "round" in st else "a run"


def claim_run_dir(
    path: str | Path, resume: bool = False, overwrite: bool = False, resumable: bool = True
) -> Path | None:
    """Make ``path`` ready for a run without losing an earlier one; call it after every other
    check has passed, before the first write.

    * nothing there (or no run in it): nothing to do;
    * ``resume``: the run there is continued, nothing moves;
    * ``overwrite``: the earlier run is moved aside to ``<path>.replaced-<time>`` (never
      deleted) and that new path is returned;
    * else :class:`RunExistsError` names the ways out (``--resume`` only where the launcher
      has one: ``resumable``).
    """
    p = Path(path)
    if resume or not holds_run(p):
        return None
    if not overwrite:
        cont = f"continue it with --resume {p}, " if resumable else ""
        raise RunExistsError(
            f"{p} already holds {_describe(p)}; {cont}give this run another --name, or pass "
            f"--overwrite to move the old one aside (it is kept)"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = p.with_name(f"{p.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = p.with_name(f"{p.name}.replaced-{stamp}-{n}")
    os.replace(p, aside)
    return aside


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers (and a crash)
    see the old file or the new one, never half of one."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)
    return p


_atomic_write = write_text_atomic


def write_safetensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``tensors`` (detached, CPU, contiguous) as safetensors, atomically (temp file +
    rename), with ``metadata`` values as strings; creates the parent folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in metadata.items()} if metadata else None
    tmp = p.with_suffix(p.suffix + ".tmp")
    save_file(data, str(tmp), metadata=meta)
    os.replace(tmp, p)
    return p


class RunDir:
    """One run's directory (created on first use).

    Args:
        path: the directory, e.g. ``runs/merge-v-avg``.
        keep_checkpoints: how many of the newest round checkpoints to keep.
    """

    def __init__(self, path: str | Path, keep_checkpoints: int = 2):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.keep = keep_checkpoints

    # ------------------------------------------------------------------ metrics
    @property
    def metrics_jsonl(self) -> Path:
        """Per-round metrics, one JSON object a line."""
        return self.path / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        """Per-round metrics as CSV (columns: union of all rows' keys)."""
        return self.path / "metrics.csv"

    def metrics(self) -> list[dict[str, Any]]:
        """All rows logged so far."""
        if not self.metrics_jsonl.is_file():
            return []
        return [json.loads(line) for line in self.metrics_jsonl.read_text().splitlines() if line]

    def log_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one row (must hold ``round``) and rewrite the CSV, both atomically: a crash
        leaves the rows before this one, never half a file."""
        rows = [*self.metrics(), dict(row)]
        _atomic_write(self.metrics_jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        self._write_csv(rows)

    def truncate_metrics(self, last_round: int) -> None:
        """Drop rows after ``last_round`` (a resumed run repeats them)."""
        rows = [r for r in self.metrics() if r.get("round", 0) <= last_round]
        _atomic_write(self.metrics_jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        self._write_csv(rows)

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        tmp = self.metrics_csv.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.metrics_csv)

    # ------------------------------------------------------------------ checkpoints
    @property
    def state_file(self) -> Path:
        """JSON with the last completed round and its checkpoint."""
        return self.path / "state.json"

    def state(self) -> dict[str, Any]:
        """The saved state, or ``{}`` for a fresh run."""
        return json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    def save_checkpoint(
        self, round_: int, state_dict: Mapping[str, torch.Tensor], **extra: Any
    ) -> Path:
        """Save the global weights after ``round_`` and record it as the resume point."""
        ckdir = self.path / "checkpoints"
        ckdir.mkdir(exist_ok=True)
        path = write_safetensors(
            ckdir / f"round_{round_:04d}.safetensors", state_dict, {"round": round_}
        )
        state = {
            **self.state(),
            **extra,
            "round": round_,
            "checkpoint": str(path.relative_to(self.path)),
        }
        _atomic_write(self.state_file, json.dumps(state, indent=1))
        for old in sorted(ckdir.glob("round_*.safetensors"))[: -self.keep]:
            old.unlink()
        return path

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> Path:
        """Write extra server state (e.g. a momentum buffer) atomically as safetensors."""
        return write_safetensors(self.path / name, tensors)

    def load_tensors(self, name: str) -> dict[str, torch.Tensor] | None:
        """What :meth:`save_tensors` wrote, or None when there is no such file."""
        path = self.path / name
        return load_file(str(path)) if path.is_file() else None

    def update_state(self, **extra: Any) -> None:
        """Merge fields into state.json."""
        _atomic_write(self.state_file, json.dumps({**self.state(), **extra}, indent=1))

    def load_checkpoint(self) -> tuple[int, dict[str, torch.Tensor]]:
        """``(round, state_dict)`` of the last completed round.

        Raises:
            FileNotFoundError: the directory holds no completed round.
        """
        st = self.state()
        if "checkpoint" not in st:
            raise FileNotFoundError(
                f"{self.path} holds no completed round to resume from "
                f"(no checkpoint in {self.state_file})"
            )
        return int(st["round"]), load_file(str(self.path / st["checkpoint"]))
