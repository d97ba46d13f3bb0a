"""Every check of a config against this machine that can fail before a federation starts,
in one place that the launchers, the simulation and the ServerApp under ``flwr run`` import.
It imports no app, so nothing it checks can pull in the engine."""

from __future__ import annotations

from fedssl import runtime
from fedssl.config import ConfigError, ExperimentConfig

__all__ = ["preflight", "num_clients", "check_model", "check_ssl_section"]


def num_clients(cfg: ExperimentConfig) -> int:
    """Virtual SuperNodes: one per ``data.clients`` entry, else ``data.num_clients``."""
    return len(cfg.data.clients) or cfg.data.num_clients


def check_model(cfg: ExperimentConfig) -> None:
    """Refuse an unknown backbone (timm name or small-image ResNet) before anything starts
    (stage one and two).

    Raises:
        ConfigError: names the key and how to list the valid names.
    """
    if cfg.experiment not in ("pretrain", "finetune"):
        return
    from fedssl.models.backbones import check_backbone_name

    try:
        check_backbone_name(cfg.model.backbone)
    except ValueError as err:
        raise ConfigError(f"model.backbone: {err}") from None


def check_ssl_section(cfg: ExperimentConfig) -> None:
    """Refuse stage one's SSL settings that would fail on every client (a travelling part the
    method lacks, a client's bad views) before anything starts.

    Raises:
        ConfigError: the message names the key.
    """
    if cfg.experiment != "pretrain":
        return
    from fedssl.methods.pretrain import check_ssl

    try:
        check_ssl(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def preflight(cfg: ExperimentConfig, machine: runtime.Machine | None = None) -> dict:
    """Every check of ``cfg`` against this machine that can fail before Ray starts.

    Returns Flower's Ray ``backend_config`` (client resources and Ray's own limits).

    Raises:
        ConfigError: impossible resources, a device or precision the machine cannot do, an
            unknown backbone, SSL settings no client can run (one line that says what to set).
    """
    check_model(cfg)
    check_ssl_section(cfg)
    resources, init = runtime.client_resources(cfg, num_clients(cfg), machine)
    return {
        "client_resources": resources,
        "init_args": {**init, "include_dashboard": False},
    }
