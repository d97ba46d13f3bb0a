"""A site's long-lived fedssl process for Flower's deployment engine.

A SuperNode starts a fresh ``flwr-clientapp`` process for every message it receives (Flower
1.42 runs one message per process in both isolation modes), and a fresh process pays for
importing torch and Lightning, building the client's data and decoding its images before it
trains: most of a deployed round's time on small clients. A site worker pays that once: it runs
beside the SuperNode, on the same machine and as the same user, and the ClientApp only relays
each message to it over a local socket (``worker`` in the SuperNode's node config)::

    python launch/site_worker.py --socket /run/fedssl/site0.sock &
    flower-supernode ... --node-config "partition-id=0 worker='/run/fedssl/site0.sock'"

The worker answers with exactly what the ClientApp would have computed itself
(:func:`fedssl.federation.client_work.handle`), keeping its image cache, imports and CUDA context
across rounds and runs. The Flower node state travels with each message and back, so a restarted
worker loses nothing but its warm caches.

The socket is a Unix socket created with mode 0600; every connection must also present the key
the worker writes to ``<socket>.key`` (mode 0600, 32 random bytes, HMAC challenge of
:mod:`multiprocessing.connection`). Only the site's own user can talk to it.

This module imports only the standard library at import time: the relaying ClientApp stays as
light as Flower itself.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import sys
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

__all__ = ["WorkerError", "ask", "key_file", "serve"]

#: The request tuple's first element; a worker refuses a request of another protocol.
PROTOCOL = "fedssl-site-worker/1"


class WorkerError(RuntimeError):
    """The site worker could not be reached, or its answer is an error."""


def key_file(socket_path: str | Path) -> Path:
    """Where the worker at ``socket_path`` keeps its connection key."""
    return Path(f"{socket_path}.key")


def _read_key(socket_path: str) -> bytes:
    f = key_file(socket_path)
    try:
        return f.read_bytes()
    except OSError as err:
        raise WorkerError(
            f"no site worker at {socket_path!r} (cannot read {f}: {err.strerror}); start it on "
            f"this machine with `python launch/site_worker.py --socket {socket_path}`"
        ) from None


def ask(socket_path: str, kind: str, content: Any, node_config: dict, state: Any):
    """Relay one message to the worker at ``socket_path``; returns its ``(content, state)``.

    Raises:
        WorkerError: no worker answers there, or the worker's handling raised (its error type,
            message and the last line of its traceback).
    """
    key = _read_key(socket_path)
    try:
        conn = Client(socket_path, family="AF_UNIX", authkey=key)
    except (OSError, EOFError) as err:
        raise WorkerError(
            f"the site worker at {socket_path!r} does not answer ({type(err).__name__}: {err}); "
            f"start it with `python launch/site_worker.py --socket {socket_path}`"
        ) from None
    with conn:
        try:
            conn.send((PROTOCOL, kind, content, dict(node_config), state))
            reply = conn.recv()
        except (OSError, EOFError) as err:
            raise WorkerError(
                f"the site worker at {socket_path!r} stopped while handling a {kind} message "
                f"({type(err).__name__}); see its log"
            ) from None
    if reply[0] == "ok":
        return reply[1], reply[2]
    raise WorkerError(f"site worker: {reply[1]}")


def _live(socket_path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(socket_path)
        except OSError:
            return False
    return True


def _prepare(socket_path: Path) -> None:
    """Refuse a path that is in use or is not a stale socket; remove a stale socket."""
    if len(os.fsencode(socket_path)) > 107:  # sun_path holds 108 bytes with the final NUL
        raise ValueError(f"{socket_path} is too long for a Unix socket (at most 107 bytes)")
    if not socket_path.parent.is_dir():
        raise ValueError(f"{socket_path.parent} does not exist; create it first")
    if socket_path.exists() or socket_path.is_symlink():
        if not stat.S_ISSOCK(socket_path.lstat().st_mode):
            raise ValueError(f"{socket_path} exists and is not a socket; choose another path")
        if _live(str(socket_path)):
            raise ValueError(f"a site worker already serves {socket_path}")
        socket_path.unlink()  # a stale socket of a worker that is gone


def _write_key(socket_path: Path) -> bytes:
    key = secrets.token_bytes(32)
    f = key_file(socket_path)
    tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    os.replace(tmp, f)
    return key


def _handle(request) -> tuple:
    if not (isinstance(request, tuple) and len(request) == 5 and request[0] == PROTOCOL):
        return ("error", f"ValueError: not a {PROTOCOL} request")
    _, kind, content, node_config, state = request
    from fedssl.federation.client_work import handle

    try:
        reply = handle(kind, content, node_config, state)
    except Exception as err:  # the answer carries it; the worker keeps serving
        where = traceback.extract_tb(err.__traceback__)[-1]
        return (
            "error",
            f"{type(err).__name__}: {err} ({Path(where.filename).name}:{where.lineno})",
        )
    return ("ok", reply, state)


def _describe(request, seconds: float, reply: tuple) -> str:
    try:
        kind, content, node_config = request[1], request[2], request[3]
        rnd = content["config"]["server-round"] if "config" in content else "?"
        who = f"partition {node_config.get('partition-id', '?')}"
    except Exception:  # a malformed request still gets a log line
        kind, rnd, who = "?", "?", "?"
    status = "ok" if reply[0] == "ok" else reply[1]
    stamp = time.strftime("%H:%M:%S")
    return f"[fedssl] {stamp} site worker: {kind} round {rnd}, {who}: {seconds:.2f}s {status}"


def serve(socket_path: str | Path, max_messages: int | None = None) -> int:
    """Serve messages on ``socket_path`` until interrupted (or ``max_messages`` were answered).

    Imports fedssl's training path once, before the first message. Returns how many messages
    it answered.

    Raises:
        ValueError: ``socket_path`` is in use, is not a socket, or its folder is missing
            (checked before anything is created).
    """
    path = Path(socket_path).absolute()
    _prepare(path)
    key = _write_key(path)
    old_umask = os.umask(0o177)  # the socket file is created 0600
    try:
        listener = Listener(str(path), family="AF_UNIX", authkey=key)
    finally:
        os.umask(old_umask)
    t0 = time.perf_counter()
    # torch, Lightning and the training path, once: before the first message, not during it
    import fedssl.federation.client_work  # noqa: F401
    import fedssl.federation.kinds  # noqa: F401

    print(
        f"[fedssl] site worker on {path} (key {key_file(path)}), ready in "
        f"{time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    answered = 0
    try:
        with listener:
            while max_messages is None or answered < max_messages:
                try:
                    conn = listener.accept()
                except (OSError, EOFError, AuthenticationError) as err:  # e.g. a wrong key
                    print(f"[fedssl] site worker: refused a connection ({err})", flush=True)
                    continue
                with conn:
                    try:
                        request = conn.recv()
                    except (OSError, EOFError):
                        continue
                    t = time.perf_counter()
                    reply = _handle(request)
                    print(_describe(request, time.perf_counter() - t, reply), flush=True)
                    try:
                        conn.send(reply)
                    except (OSError, EOFError):
                        print(
                            "[fedssl] site worker: the ClientApp left before the reply", flush=True
                        )
                answered += 1
    except KeyboardInterrupt:
        pass
    finally:
        for f in (path, key_file(path)):
            try:
                f.unlink()
            except FileNotFoundError:
                pass
    print(f"[fedssl] site worker on {path} stopped after {answered} messages", file=sys.stderr)
    return answered
