"""The fedssl ``ClientApp``: trains the received global weights on this node's partition, and
scores merged weights on its own data when the task asks for federated evaluation.

The resolved experiment config arrives with every train and evaluate message (``fedssl.config``,
YAML), so ``flwr run`` and the launch scripts behave the same; ``experiment`` picks the task
(:mod:`fedssl.federation.tasks`). Node-local settings come from the node
config: ``partition-id`` (set by the simulation engine, or ``--node-config "partition-id=N"`` on a
SuperNode) and optionally ``data-root`` (where this node keeps its data).
"""

from __future__ import annotations

import yaml
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedssl.config import ConfigError, ExperimentConfig, from_dict
from fedssl.federation.records import from_record, to_record

__all__ = ["app", "CONFIG_KEY", "config_from_message", "partition_id"]

CONFIG_KEY = "fedssl.config"

app = ClientApp()


def config_from_message(msg: Message) -> ExperimentConfig:
    """The experiment config sent by the server with a train message."""
    cfg_record = msg.content.config_records.get("config")
    if cfg_record is None or CONFIG_KEY not in cfg_record:
        raise ConfigError(f"train message carries no {CONFIG_KEY!r}; is the ServerApp fedssl's?")
    return from_dict(ExperimentConfig, yaml.safe_load(str(cfg_record[CONFIG_KEY])))


def partition_id(context: Context) -> int:
    """This node's ``partition-id`` from its node config."""
    if "partition-id" not in context.node_config:
        raise ConfigError(
            "node config has no 'partition-id'; start the SuperNode with "
            '--node-config "partition-id=N"'
        )
    return int(context.node_config["partition-id"])


def _config(msg: Message, context: Context) -> ExperimentConfig:
    cfg = config_from_message(msg)
    if "data-root" in context.node_config:
        cfg.data.root = str(context.node_config["data-root"])
    return cfg


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training; replies with new weights and metrics."""
    cfg = _config(msg, context)
    server_round = int(msg.content["config"]["server-round"])
    from fedssl.federation.tasks import get_task

    state, metrics = get_task(cfg).train(
        cfg,
        partition_id(context),
        from_record(msg.content["arrays"]),
        server_round,
        store=context.state,
    )
    content = RecordDict({"arrays": to_record(state), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received (merged) weights on this node's own data; replies with metrics only."""
    cfg = _config(msg, context)
    from fedssl.federation.tasks import get_task

    metrics = get_task(cfg).evaluate(
        cfg, partition_id(context), from_record(msg.content["arrays"]), store=context.state
    )
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
