"""Kill the server process between uploads and the merge: nothing accepted is lost, and the merge
gives the same version as without the restart."""

import os
import signal
from pathlib import Path

from fedssl.hub.client import HubClient
from fedssl.hub.process import start_server_process, stop_server_process


def _start(db: str, tmp: Path, tag: str):
    return start_server_process(db, tmp, manager="alice", tag=tag)


def _contribute(address, manager_key, hub_state, keys=None):
    with HubClient(address, manager_key) as m:
        if keys is None:
            m.create_model("m", hub_state(0), builder={"model": "mlp", "num_classes": 10,
                                                       "hidden": 8})  # fmt: skip
            keys = [m.create_key(f"p{i}")["api_key"] for i in range(3)]
    for i, k in enumerate(keys):
        with HubClient(address, k) as p:
            assert p.push("m", 1, hub_state(10 + i), 50 + i)["status"] == "pending"
    return keys


def test_kill_between_upload_and_merge(tmp_path, hub_cls, db_url):
    Hub = hub_cls  # noqa: N806
    db = db_url  # a SQLite file, then a PostgreSQL database
    proc, address, manager_key = _start(db, tmp_path, "a")
    try:
        _contribute(address, manager_key, Hub.state)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown
        proc.wait(timeout=30)
    proc, address, manager_key2 = _start(db, tmp_path, "b")
    try:
        assert manager_key2 == manager_key  # the key file was not rewritten: alice had a key
        with HubClient(address, manager_key) as m:
            rows = m.contributions("m", 1)
            assert [(r["participant"], r["num_examples"], r["status"]) for r in rows] == [
                ("p0", 50, "pending"), ("p1", 51, "pending"), ("p2", 52, "pending"),
            ]  # fmt: skip
            after_restart = m.merge("m", 1)
    finally:
        stop_server_process(proc)
    reference = Hub(f"sqlite:///{tmp_path / 'ref.db'}")  # the same uploads, never restarted
    try:
        _contribute(reference.address, reference.manager_key, Hub.state)
        with reference.client() as m:
            uninterrupted = m.merge("m", 1)
    finally:
        reference.stop()
    assert after_restart["version"] == uninterrupted["version"] == 2
    assert after_restart["weights_sha256"] == uninterrupted["weights_sha256"]
    assert after_restart["num_examples"] == 153
