"""Run an experiment in Flower's simulation engine (Ray), one virtual SuperNode per client."""

from __future__ import annotations

import logging
import os

from fedssl.config import ExperimentConfig

__all__ = ["simulate"]


def simulate(cfg: ExperimentConfig, resume: bool = False, verbose: bool = False) -> None:
    """Run ``cfg``'s rounds with one virtual client per ``data.clients`` entry (or
    ``data.num_clients`` for the partitioned single-dataset experiments).

    Each client gets ``federation.cpus_per_client`` CPUs from Ray, so on a 2-core machine two
    clients train at once with one thread each (``train.threads``).
    """
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from fedssl.federation.client_app import app as client_app
    from fedssl.federation.server_app import make_server_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    backend_config = {
        "client_resources": {"num_cpus": cfg.federation.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
    }
    run_simulation(
        server_app=make_server_app(cfg, resume),
        client_app=client_app,
        num_supernodes=len(cfg.data.clients) or cfg.data.num_clients,
        backend_config=backend_config,
        verbose_logging=verbose,
    )
