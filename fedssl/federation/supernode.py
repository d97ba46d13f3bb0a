"""Flower's SuperNode with short polls: ``flower-supernode`` as it is, waiting less between looks.

A SuperNode of Flower 1.42 looks for a new message, and when there is none waits a fixed 3 s
before it looks again (``flwr/supernode/start_client_internal.py``); it waits for its
ClientApp's reply in steps of 0.5 s; the SuperExec it starts looks for a task to launch every
1 s (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``). Federated rounds are a chain of messages whose next
link exists only once the last reply was merged, so every message of a round meets the SuperNode
asleep: about 3 s of a round are waiting, more than a small client's training.

:func:`run` starts Flower's own ``flower-supernode`` (same flags, same behaviour) with those
waits capped at ``poll_s``: the module-level ``time`` that the SuperNode's loop sleeps through
is replaced by one whose ``sleep`` never waits longer than ``poll_s``, and the SuperExec gets
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=poll_s`` unless the environment sets it. A SuperNode then
asks the SuperLink about ``1 / poll_s`` times a second while idle: cheap for a handful of sites,
not for thousands (keep Flower's ``flower-supernode`` there).

If a Flower release moves the waits, :func:`shorten_polls` says so and the SuperNode runs
unchanged (slower, never wrong); ``tests/federation/test_supernode.py`` fails on such a release.
"""

from __future__ import annotations

import inspect
import os
import sys
import time as _time
from collections.abc import Sequence
from typing import Annotated

from fedssl.domains import Range, domain_of

__all__ = ["POLL_S", "POLL_RANGE", "CappedClock", "run", "shorten_polls"]

#: default longest wait between a SuperNode's looks for messages and replies
POLL_S = 0.1
#: the waits it may be given, in seconds (Flower's own idle wait is 3 s)
POLL_RANGE = Annotated[float, Range(0.01, 3.0)]
#: the environment variable Flower's SuperExec reads for its task poll interval
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
#: the waits of Flower's SuperNode loop this module shortens (checked in its source)
FLOWER_WAITS = ("time.sleep(3)", "time.sleep(0.5)")


class CappedClock:
    """Stands in for the :mod:`time` module: ``sleep`` waits at most ``cap`` seconds; every
    other attribute is the real module's."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        """Sleep ``min(seconds, cap)`` seconds."""
        _time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str):
        return getattr(_time, name)


def shorten_polls(poll_s: float = POLL_S) -> bool:
    """Cap the waits of Flower's SuperNode loop (in this process) at ``poll_s`` seconds.

    Returns:
        True when the loop's waits were found and capped; False (with a line on stderr) when the
        installed Flower has them elsewhere, in which case nothing is changed.
    """
    if not domain_of(POLL_RANGE).allows(poll_s):
        raise ValueError(f"poll_s must be within [0.01, 3] seconds, got {poll_s}")
    from flwr.supernode import start_client_internal as loop

    try:
        source = inspect.getsource(loop)
    except OSError:  # no source shipped: nothing to check the waits against
        source = ""
    clock = getattr(loop, "time", None)
    if clock is not _time and not isinstance(clock, CappedClock):
        source = ""  # the loop no longer sleeps through a module-level ``time``
    missing = [w for w in FLOWER_WAITS if w not in source]
    if missing:
        print(
            f"[fedssl-supernode] warning: this Flower's SuperNode loop has no {missing[0]} "
            "(it changed since 1.42); running it with Flower's own polls",
            file=sys.stderr,
        )
        return False
    loop.time = CappedClock(poll_s)
    return True


def run(argv: Sequence[str], poll_s: float = POLL_S) -> None:
    """Run Flower's ``flower-supernode`` with ``argv`` (its own flags) and polls of ``poll_s``."""
    os.environ.setdefault(SUPEREXEC_POLL_ENV, f"{poll_s:g}")
    if shorten_polls(poll_s):
        print(
            f"[fedssl] SuperNode polls capped at {poll_s:g} s (Flower's own: 3 s between looks "
            f"for a message); SuperExec task polls every {os.environ[SUPEREXEC_POLL_ENV]} s",
            file=sys.stderr,
            flush=True,
        )
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv]
    flower_supernode()
