"""The site worker (fedssl.federation.site_worker) on a real Unix socket: it answers what the
ClientApp would, refuses what it should, and never takes over a path that is not its own."""

import socket
import tempfile
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import pytest
from flwr.app import ConfigRecord, RecordDict

from fedssl.federation.site_worker import WorkerError, ask, key_file, serve


@pytest.fixture
def sock_dir():
    # pytest's tmp paths can pass the 107 bytes a Unix socket's path may have
    with tempfile.TemporaryDirectory(prefix="fw") as d:
        yield d


def _serving(path: str, n: int) -> threading.Thread:
    t = threading.Thread(target=serve, args=(path, n), daemon=True)
    t.start()
    for _ in range(200):
        if key_file(path).exists():
            break
        threading.Event().wait(0.05)
    return t


def test_an_error_in_the_worker_comes_back_as_its_type_and_message(sock_dir):
    path = f"{sock_dir}/w.sock"
    t = _serving(path, 1)
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})  # no fedssl.config
    with pytest.raises(WorkerError, match="ConfigError: train message carries no 'fedssl.config'"):
        ask(path, "evaluate", content, {"partition-id": 0}, RecordDict())
    t.join(10)
    assert not t.is_alive()  # it stopped after its one message and removed its files
    assert not key_file(path).exists()


def test_a_connection_without_the_key_is_refused_and_the_worker_keeps_serving(sock_dir):
    path = f"{sock_dir}/w.sock"
    t = _serving(path, 1)
    with pytest.raises(AuthenticationError):  # the HMAC challenge fails on its side too
        Client(path, family="AF_UNIX", authkey=b"not the key").send("x")
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})
    with pytest.raises(WorkerError, match="ConfigError"):  # answered: it is still there
        ask(path, "evaluate", content, {"partition-id": 0}, RecordDict())
    t.join(10)


def test_without_a_worker_the_error_says_how_to_start_one(sock_dir):
    with pytest.raises(WorkerError, match=r"launch/site_worker.py --socket .*nowhere.sock"):
        ask(f"{sock_dir}/nowhere.sock", "train", RecordDict(), {}, RecordDict())


def test_it_never_takes_over_a_file_or_a_live_worker_but_replaces_a_stale_socket(sock_dir):
    plain = f"{sock_dir}/data.txt"
    with open(plain, "w") as f:
        f.write("keep me")
    with pytest.raises(ValueError, match="is not a socket"):
        serve(plain, 1)
    assert open(plain).read() == "keep me"

    stale = f"{sock_dir}/stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # bound, never listening: what a killed worker leaves
    t = _serving(stale, 1)
    with pytest.raises(ValueError, match="already serves"):
        serve(stale, 1)
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})
    with pytest.raises(WorkerError, match="ConfigError"):
        ask(stale, "evaluate", content, {"partition-id": 0}, RecordDict())
    t.join(10)

    with pytest.raises(ValueError, match="too long"):
        serve(f"{sock_dir}/{'x' * 120}.sock", 1)
