"""Run an experiment in Flower's simulation engine (Ray), one virtual SuperNode per client.

This module is the one adapter between fedssl and ``flwr.simulation.run_simulation``. Flower
1.42 marks that function deprecated (its supported path is ``flwr run`` against a local
SuperLink) and logs a DEPRECATED FEATURE banner on every call; fedssl keeps it here because it
runs the apps in-process (a launcher's config object, exceptions and exit codes reach the
caller; no SuperLink to start or stop) and drops exactly that one banner. The same apps run
under ``flwr run .`` (``tests/federation/test_flwr_run.py``), so the day Flower removes
``run_simulation`` only this module changes (docs/architecture.md).

Everything that can be refused is checked by :func:`~fedssl.federation.preflight.preflight`
before Ray starts: the runtime
(device, precision, workers), Ray's client resources against this machine, the backbone name.
An engine that cannot start or dies raises :class:`~fedssl.federation.strategy.EngineFailed`
within seconds, its cause in one line, and the server thread stops with it (never a hang).
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
import warnings
from contextlib import contextmanager

from fedssl.config import ExperimentConfig
from fedssl.federation.preflight import num_clients, preflight

__all__ = ["simulate", "engine_cause"]


class _DropRunSimulationBanner(logging.Filter):
    """Drops Flower's DEPRECATED FEATURE banner about ``run_simulation`` (and nothing else)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("DEPRECATED FEATURE") and "run_simulation" in str(record.args))


class _DropClientTracebacks(logging.Filter):
    """Drops the Ray backend's report of a client's exception (its message and traceback, as
    ERROR records); the server logs one line per failing client instead."""

    MARKS = ("An exception was raised when processing a message by RayBackend",
             "Traceback (most recent call last)", "ray::ClientAppActor")  # fmt: skip

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        text = record.getMessage()
        return not any(mark in text for mark in self.MARKS)


@contextmanager
def _flower_logs(verbose: bool = False):
    """Flower's logs during a simulation: without its run_simulation banner, Ray's tip about
    GPU visibility and (unless ``verbose``) Ray's tracebacks of client exceptions."""
    flwr_log = logging.getLogger("flwr")
    banner = _DropRunSimulationBanner()
    flwr_log.addFilter(banner)
    tracebacks = None if verbose else _DropClientTracebacks()
    if tracebacks is not None:
        flwr_log.addFilter(tracebacks)
    try:
        with warnings.catch_warnings():
            # Ray's tip that it will stop hiding GPUs from zero-GPU actors: fedssl sets the
            # variable (below) so that they stay hidden.
            warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*")
            yield
    finally:
        flwr_log.removeFilter(banner)
        if tracebacks is not None:
            flwr_log.removeFilter(tracebacks)


def simulate(
    cfg: ExperimentConfig, resume: bool = False, verbose: bool = False, backend: dict | None = None
) -> None:
    """Run ``cfg``'s rounds with one virtual client per ``data.clients`` entry (or
    ``data.num_clients`` for the partitioned single-dataset experiments).

    Each client gets ``federation.cpus_per_client`` CPUs and ``federation.gpus_per_client``
    GPUs from Ray (a client with no GPU share sees no GPU), so on a 2-core machine two clients
    train at once with one thread each (``train.threads``).

    ``backend`` is what :func:`~fedssl.federation.preflight.preflight` returned for ``cfg``
    where the caller has run it and claimed the run directory (every launcher does, as its last
    checks before the first write); without it both happen here, before Ray starts.

    Raises:
        ConfigError: from :func:`~fedssl.federation.preflight.preflight`, before Ray starts.
        fedssl.runs.RunExistsError: the run directory holds a run and ``resume`` is False.
        fedssl.federation.strategy.FederationFailed: no usable reply for
            ``federation.max_failed_rounds`` consecutive rounds.
        fedssl.federation.strategy.EngineFailed: the engine could not start or stopped (the
            message names the cause).
    """
    if backend is None:
        from fedssl.runs import claim_run_dir

        backend = preflight(cfg)
        claim_run_dir(cfg.run_dir(), resume=resume)  # refuses to start over an earlier run
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # a client with num_gpus 0 gets CUDA_VISIBLE_DEVICES="" (Ray's default, made explicit)
    os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "1"
    from flwr.simulation import run_simulation

    from fedssl.federation.client_app import app as client_app
    from fedssl.federation.server_app import make_server_app
    from fedssl.federation.strategy import EngineFailed

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    engine_down, server_done = threading.Event(), threading.Event()
    server_app = make_server_app(cfg, resume, engine_down=engine_down, finished=server_done)
    with _flower_logs(verbose):
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_clients(cfg),
                backend_config=backend,
                verbose_logging=verbose,
            )
        except Exception as err:
            cause = engine_cause(err)
            if cause is None:
                raise  # the server's own (FederationFailed, a bad reply, ...)
            engine_down.set()  # the server thread's next poll of the grid raises
            server_done.wait(timeout=30)
            raise EngineFailed(
                f"Flower's simulation engine (Ray) failed: {cause}. The run directory "
                f"{cfg.run_dir()} keeps every finished round (--resume continues it)"
            ) from err


def engine_cause(err: BaseException) -> str | None:
    """``"<type>: <message>"`` of the first error behind ``err`` when ``err`` came from Flower's
    simulation runtime (the engine: Ray's backend, its actors), else None."""
    chain, seen = [], set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    from_engine = any(
        "flwr/server/superlink/fleet/vce" in f.filename.replace(os.sep, "/")
        for x in chain
        for f in traceback.extract_tb(x.__traceback__)[-1:]
    )
    if not from_engine:
        return None
    root = chain[-1]
    return f"{type(root).__name__}: {' '.join(str(root).split())}"
