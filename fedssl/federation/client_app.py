"""The fedssl ``ClientApp``: trains the received global weights on this node's partition, and
scores merged weights on its own data when the task asks for federated evaluation.

What a message asks is computed by :func:`fedssl.federation.client_work.handle`, here or, on a
SuperNode with a site worker, in that worker.

On a SuperNode, ``worker`` in the node config (the path of a site worker's socket,
:mod:`fedssl.federation.site_worker`) has this process relay each message to that long-lived
process instead of importing torch and building the client's data itself; the answer is the same.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedssl.federation.client_work import handle
from fedssl.federation.secagg import secure_aggregation_mod

__all__ = ["app"]

app = ClientApp(mods=[secure_aggregation_mod])


def _reply(kind: str, msg: Message, context: Context) -> Message:
    worker = context.node_config.get("worker")
    if not worker:
        return Message(
            content=handle(kind, msg.content, context.node_config, context.state), reply_to=msg
        )
    from fedssl.federation.site_worker import ask

    content, state = ask(str(worker), kind, msg.content, dict(context.node_config), context.state)
    for k in [k for k in context.state if k not in state]:
        del context.state[k]
    for k, v in state.items():
        context.state[k] = v
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training; replies with new weights and metrics."""
    return _reply("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received (merged) weights on this node's own data; replies with metrics only."""
    return _reply("evaluate", msg, context)
