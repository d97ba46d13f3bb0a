"""Hub fixtures: a real PostgreSQL server (a throw-away cluster, or $FEDSSL_PG_URL), SQLite
files, and a hub server on loopback with a manager key.

PostgreSQL: ``$FEDSSL_PG_URL`` (a server you run) or, where Debian's ``postgresql`` is installed
(``./setup.sh`` installs it as root), a temporary cluster started with ``initdb`` / ``pg_ctl``.
Without either the PostgreSQL cases are skipped — unless ``FEDSSL_REQUIRE_PG=1`` (set by
``.ci/run``), where they fail instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from fedssl.models.small import build_small_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run as the ``postgres`` user there."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def pg_server():
    """A SQLAlchemy URL prefix ``postgresql+psycopg://user@host:port`` of a live server."""
    url = os.environ.get("FEDSSL_PG_URL")
    if url:
        yield url.rsplit("/", 1)[0] if url.count("/") > 2 else url
        return
    required = os.environ.get("FEDSSL_REQUIRE_PG") == "1"
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if required:
            pytest.fail("FEDSSL_REQUIRE_PG=1 but PostgreSQL is not installed (initdb missing)")
        pytest.skip("PostgreSQL not installed (apt-get install postgresql, or set FEDSSL_PG_URL)")
    # not under pytest's tmp dir: its parents are private to the user, and as root the cluster
    # runs as ``postgres``, which must reach it
    base = Path(tempfile.mkdtemp(prefix="fedssl-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    out = subprocess.run(
        _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "fedssl", "-E", "UTF8"]),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        msg = f"initdb failed: {out.stderr[-500:]}"
        if required:
            pytest.fail(msg)
        pytest.skip(msg)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
    out = subprocess.run(
        _as_postgres([pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"]),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        msg = f"pg_ctl start failed: {out.stderr[-300:]} {log[-500:]}"
        if required:
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield f"postgresql+psycopg://fedssl@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the PostgreSQL server (dropped afterwards)."""
    from sqlalchemy import create_engine, text

    name = "hub_" + uuid.uuid4().hex[:12]
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{pg_server}/{name}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Each store test runs on a SQLite file and on a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    return request.getfixturevalue("pg_url")


class Hub:
    """A running hub: ``address``, ``store``, a manager key and helpers."""

    BUILDER = {"model": "mlp", "num_classes": 10, "hidden": 8}

    _rng = threading.Lock()  # state() seeds torch's global RNG: one build at a time

    @staticmethod
    def state(seed: int = 0) -> dict[str, torch.Tensor]:
        """A tiny MLP's weights (784-8-8-10); the same for a seed from any thread."""
        with Hub._rng:
            torch.manual_seed(seed)
            net = build_small_model("mlp", 10, hidden=8)
        return {k: v.clone() for k, v in net.state_dict().items()}

    def __init__(self, url: str, **kw):
        from fedssl.hub.server import serve

        self.url = url
        self.server, self.port, self.store = serve(url, 0, **kw)
        self.address = f"127.0.0.1:{self.port}"
        self.manager_key, self.manager = self.store.create_key("manager", "alice")

    def client(self, key: str | None = None, **kw):
        from fedssl.hub.client import HubClient

        return HubClient(self.address, self.manager_key if key is None else key, **kw)

    def participant(self, name: str):
        """A client with a fresh participant key for ``name`` (issued by the manager)."""
        with self.client() as m:
            return self.client(m.create_key(name)["api_key"])

    def stop(self):
        self.server.stop(0)
        self.store.close()


@pytest.fixture
def hub_cls():
    """The :class:`Hub` helper class itself (for tests that start servers their own way)."""
    return Hub


@pytest.fixture
def make_hub(tmp_path):
    """``make_hub(**serve_kwargs)``: a hub on a SQLite file with server options (TLS, limits)."""
    made = []

    def make(**kw):
        made.append(Hub(f"sqlite:///{tmp_path / f'hub{len(made)}.db'}", **kw))
        return made[-1]

    yield make
    for h in made:
        h.stop()


@pytest.fixture
def hub(tmp_path):
    h = Hub(f"sqlite:///{tmp_path / 'hub.db'}")
    yield h
    h.stop()


@pytest.fixture
def hub_any(db_url):
    """A hub on SQLite and on PostgreSQL."""
    h = Hub(db_url)
    yield h
    h.stop()


@pytest.fixture
def published(hub):
    """``hub`` with model ``m`` (a tiny MLP) at version 1."""
    with hub.client() as m:
        m.create_model("m", hub.state(), builder=hub.BUILDER)
    return hub


def wait_port(port: int, timeout: float = 30.0) -> None:
    t = time.time()
    while time.time() - t < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")
