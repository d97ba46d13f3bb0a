"""What a client computes for a train or evaluate message, in whichever process runs it: the
ClientApp's (:mod:`fedssl.federation.client_app`) or a site worker's
(:mod:`fedssl.federation.site_worker`). It imports no torch until a message needs it.

The resolved experiment config arrives with every message (``fedssl.config``, YAML), so ``flwr
run`` and the launch scripts behave the same; ``experiment`` picks the task
(:mod:`fedssl.federation.kinds`). Node-local settings come from the node config:
``partition-id`` (set by the simulation engine, or ``--node-config "partition-id=N"`` on a
SuperNode) and optionally ``data-root`` (where this node keeps its data).

Fault injection, for testing a federation's resilience: ``FEDSSL_INJECT_FAULT`` set to
``<partition-id>:raise[:<round>]`` makes that client's training raise (in every round, or only in
``<round>``), and ``<partition-id>:hang:<seconds>[:<round>]`` makes it sleep that long first
(past ``federation.timeout_s`` it counts as timed out); ``<partition-id>:exit[:<round>]`` ends
the client's process at once (as when the system kills it for memory). Several faults are
separated by commas.
"""

from __future__ import annotations

import os
import time

import yaml
from flwr.app import Context, Message, MetricRecord, RecordDict

from fedssl.config import ConfigError, ExperimentConfig, from_dict

__all__ = [
    "CONFIG_KEY",
    "CLIP_KEY",
    "config_from_message",
    "handle",
    "inject_fault",
    "partition_id",
]

CONFIG_KEY = "fedssl.config"
#: the train config's clipping norm of the round (client-level DP, client-side clipping)
CLIP_KEY = "clipping-norm"


def config_from_message(msg: Message | RecordDict) -> ExperimentConfig:
    """The experiment config sent by the server with a train message (or its content)."""
    content = msg.content if isinstance(msg, Message) else msg
    cfg_record = content.config_records.get("config")
    if cfg_record is None or CONFIG_KEY not in cfg_record:
        raise ConfigError(f"train message carries no {CONFIG_KEY!r}; is the ServerApp fedssl's?")
    return from_dict(ExperimentConfig, yaml.safe_load(str(cfg_record[CONFIG_KEY])))


def partition_id(context: Context | dict) -> int:
    """This node's ``partition-id`` from its node config (or the node config itself)."""
    node_config = context.node_config if isinstance(context, Context) else context
    if "partition-id" not in node_config:
        raise ConfigError(
            "node config has no 'partition-id'; start the SuperNode with "
            '--node-config "partition-id=N"'
        )
    return int(node_config["partition-id"])


def _config(content: RecordDict, node_config: dict) -> ExperimentConfig:
    cfg = config_from_message(content)
    if "data-root" in node_config:
        cfg.data.root = str(node_config["data-root"])
    return cfg


def inject_fault(pid: int, server_round: int, spec: str | None = None) -> None:
    """Apply ``FEDSSL_INJECT_FAULT`` (see the module docstring) to this client and round.

    Raises:
        RuntimeError: the injected failure.
        ConfigError: a malformed specification.
    """
    spec = os.environ.get("FEDSSL_INJECT_FAULT", "") if spec is None else spec
    for item in filter(None, (x.strip() for x in spec.split(","))):
        parts = item.split(":")
        try:
            target, kind = int(parts[0]), parts[1]
            if kind in ("raise", "exit") and len(parts) in (2, 3):
                seconds, rnd = 0.0, int(parts[2]) if len(parts) == 3 else None
            elif kind == "hang" and len(parts) in (3, 4):
                seconds, rnd = float(parts[2]), int(parts[3]) if len(parts) == 4 else None
            else:
                raise ValueError
        except (ValueError, IndexError):
            raise ConfigError(
                f"FEDSSL_INJECT_FAULT: cannot read {item!r}; use PID:raise[:ROUND], "
                "PID:exit[:ROUND] or PID:hang:SECONDS[:ROUND]"
            ) from None
        if target != pid or (rnd is not None and rnd != server_round):
            continue
        if kind == "hang":
            time.sleep(seconds)
        elif kind == "exit":  # the client's process dies (as when the OS kills it for memory)
            os._exit(1)
        else:
            raise RuntimeError(f"injected failure (FEDSSL_INJECT_FAULT) in round {server_round}")


def handle(kind: str, content: RecordDict, node_config: dict, store: RecordDict) -> RecordDict:
    """The reply's content to a ``train`` or ``evaluate`` message's ``content``, computed in
    this process; ``store`` is the node's persistent state (updated in place)."""
    from fedssl.federation.kinds import get_task
    from fedssl.federation.records import from_record, to_record

    cfg = _config(content, node_config)
    pid = partition_id(node_config)
    arrays = from_record(content["arrays"])
    if kind == "train":
        server_round = int(content["config"]["server-round"])
        inject_fault(pid, server_round)
        state, metrics = get_task(cfg).train(cfg, pid, arrays, server_round, store=store)
        c = cfg.privacy.central
        if c.enabled and c.clipping == "client":  # the update is clipped before it leaves
            from fedssl.aggregation.dp import clip_update

            clip = float(content["config"].get(CLIP_KEY, c.clipping_norm))
            state, metrics["update_norm"] = clip_update(state, arrays, clip)
        return RecordDict({"arrays": to_record(state), "metrics": MetricRecord(metrics)})
    if kind == "evaluate":
        metrics = get_task(cfg).evaluate(cfg, pid, arrays, store=store)
        return RecordDict({"metrics": MetricRecord(metrics)})
    raise ValueError(f"unknown message kind {kind!r}")
