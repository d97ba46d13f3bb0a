"""Flower's SuperNode with short polls (fedssl.federation.supernode, launch/supernode.py): the
installed Flower still has the waits it caps, capping them changes only the waits, and a Flower
without them runs unchanged. The SuperNode run through launch/supernode.py serves a real round
in tests/federation/test_deployment.py."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.supernode import start_client_internal as loop

from fedssl.federation import supernode
from fedssl.federation.supernode import CappedClock, shorten_polls

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_loop_clock():
    real = loop.time
    yield
    loop.time = real


def test_the_installed_flower_has_the_waits_that_are_capped(restore_loop_clock):
    # fails on a Flower release that moved its SuperNode's waits: update FLOWER_WAITS then
    assert shorten_polls(0.05) is True
    assert isinstance(loop.time, CappedClock) and loop.time.cap == 0.05
    t = time.perf_counter()
    loop.time.sleep(3)  # the SuperNode's idle wait, as its loop calls it
    assert time.perf_counter() - t < 1.0
    assert loop.time.time() == pytest.approx(time.time(), abs=1.0)  # the rest is real time


def test_a_capped_clock_waits_short_waits_in_full():
    t = time.perf_counter()
    CappedClock(1.0).sleep(0.15)
    assert 0.14 <= time.perf_counter() - t < 0.9


def test_a_flower_without_those_waits_runs_unchanged(restore_loop_clock, capsys):
    other = object()
    loop.time = other  # a loop that no longer sleeps through a module-level ``time``
    assert shorten_polls(0.1) is False
    assert loop.time is other
    assert "running it with Flower's own polls" in capsys.readouterr().err


@pytest.mark.parametrize("poll", [0.0, -1.0, 5.0])
def test_poll_outside_its_range_is_refused(poll):
    with pytest.raises(ValueError, match="poll_s must be within"):
        shorten_polls(poll)


def test_the_superexec_gets_the_same_poll_unless_the_environment_sets_it(monkeypatch):
    ran = []
    monkeypatch.delenv(supernode.SUPEREXEC_POLL_ENV, raising=False)
    monkeypatch.setattr(supernode, "shorten_polls", lambda poll_s: ran.append(poll_s))
    monkeypatch.setattr("flwr.supernode.cli.flower_supernode", lambda: ran.append(sys.argv[:]))
    monkeypatch.setattr(sys, "argv", sys.argv[:])
    supernode.run(["--insecure", "--superlink", "127.0.0.1:1"], poll_s=0.25)
    assert os.environ[supernode.SUPEREXEC_POLL_ENV] == "0.25"
    assert ran == [0.25, ["flower-supernode", "--insecure", "--superlink", "127.0.0.1:1"]]
    monkeypatch.setenv(supernode.SUPEREXEC_POLL_ENV, "0.5")
    supernode.run([], poll_s=0.25)
    assert os.environ[supernode.SUPEREXEC_POLL_ENV] == "0.5"


@pytest.mark.parametrize("bad", ["5", "0", "soon"])
def test_launcher_refuses_a_bad_poll_before_starting(bad):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "supernode.py"), "--poll-s", bad, "--",
         "--insecure"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--poll-s" in proc.stderr
    assert "Starting Flower SuperNode" not in proc.stdout + proc.stderr
