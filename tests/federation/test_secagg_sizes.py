"""SecAgg+ at every federation size, in process: Flower's real ``SecAggPlusWorkflow`` (through
fedssl's :func:`~fedssl.federation.secagg.secure_rounds`) against Flower's real client mod
(through :func:`~fedssl.federation.secagg.secure_aggregation_mod`) for n = 3..40 and a few
hundred clients, with a grid that hands each message to its node directly. It checks what the
server is left with: the mean of the updates (within one quantisation step), the clipped-value
count and the summed loss, and nothing of any one client; and that a round whose survivors are
too few to hide each other releases nothing."""

import copy

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType

from fedssl.config import ConfigError, SecAggConfig, load_config
from fedssl.federation.records import from_record, to_record
from fedssl.federation.secagg import (
    CLEAR,
    legacy_reply,
    secagg_plan,
    secure_aggregation_mod,
    secure_rounds,
    tally_decode,
    tally_encode,
)
from fedssl.privacy import secagg_shares


@pytest.fixture(autouse=True)
def _server_process(monkeypatch):
    """Messages are built as in a ServerApp's process, which knows its run and task."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


class _Grid:
    """Delivers each message to its node's ClientApp (the mod around a fedssl client that
    adds the node's own update); ``drop``: node -> the SecAgg+ stage from which it is gone."""

    def __init__(self, updates: dict[int, dict], losses: dict[int, float], drop=None):
        self.updates, self.losses, self.drop = updates, losses, drop or {}
        self.contexts = {n: Context(0, n, {}, RecordDict(), {}) for n in updates}
        self.seen: list[Message] = []  # every reply the server received, in clear
        self.stage = 0

    def send_and_receive(self, messages, *, timeout=None):
        messages, out = list(messages), []
        for m in messages:
            n = m.metadata.dst_node_id
            if self.drop.get(n, 99) <= self.stage:
                continue  # gone: no reply (as after a timeout)
            # each node gets its own copy, as over the wire
            m = Message(
                copy.deepcopy(m.content), dst_node_id=n, message_type=m.metadata.message_type,
                group_id=m.metadata.group_id,
            )  # fmt: skip
            out.append(secure_aggregation_mod(m, self.contexts[n], self._client))
        self.stage += 1
        self.seen += out
        return out

    def _client(self, msg: Message, ctx: Context) -> Message:
        n = msg.metadata.dst_node_id
        received = from_record(msg.content["arrays"])
        state = {k: v + self.updates[n][k] if v.is_floating_point() else v
                 for k, v in received.items()}  # fmt: skip
        metrics = MetricRecord(
            {"partition-id": n, "num-examples": 500 + n, "train_loss": self.losses[n],
             "local_acc": 0.5 + n / 1e4}
        )  # fmt: skip
        return Message(RecordDict({"arrays": to_record(state), "metrics": metrics}), reply_to=msg)


def _round(n: int, drop=None, shape=(4, 3), scale=0.5, seed=0, settings=None):
    g = torch.Generator().manual_seed(seed)
    nodes = [1000 + 7 * i for i in range(n)]
    glob = {"w": torch.randn(shape, generator=g), "steps": torch.tensor(5)}
    updates = {i: {"w": torch.randn(shape, generator=g) * scale} for i in nodes}
    losses = {i: float(torch.rand((), generator=g)) * 3 for i in nodes}
    plan = secagg_plan(settings or SecAggConfig(), n)
    grid = _Grid(updates, losses, drop)
    secure_rounds(grid, plan)
    train = [
        Message(RecordDict({"arrays": to_record(glob),
                            "config": ConfigRecord({"server-round": 1})}),
                dst_node_id=i, message_type=MessageType.TRAIN)
        for i in nodes
    ]  # fmt: skip
    replies = grid.send_and_receive(train)
    return glob, updates, losses, plan, grid, replies


@pytest.mark.parametrize("n", [*range(3, 41), 129, 200])
def test_secagg_serves_every_size_and_the_server_holds_only_the_mean(n):
    glob, updates, losses, plan, grid, replies = _round(n)
    shares, threshold = secagg_shares(SecAggConfig(), n)
    assert shares % 2 == 1 or shares == n
    assert 2 * threshold > shares and shares <= max(3, int(np.ceil(np.log2(n))) + 2)
    assert len(replies) == n and not any(r.has_error() for r in replies)
    mean = torch.stack([u["w"] for u in updates.values()]).double().mean(0) + glob["w"]
    step = 2 * plan["clipping_range"] / plan["quantization_range"]
    got = [from_record(r.content["arrays"]) for r in replies]
    assert all(torch.equal(g["w"], got[0]["w"]) for g in got)
    assert (got[0]["w"].double() - mean).abs().max() <= 1.01 * step
    assert torch.equal(got[0]["steps"], glob["steps"])
    m = dict(replies[0].content["metrics"])
    assert m["secagg_clipped"] == 0
    assert m["secagg_mean_train_loss"] == pytest.approx(np.mean(list(losses.values())), abs=1e-6)
    # nothing of one client in clear: no loss, accuracy or example count, no update
    for r in grid.seen:
        for rec in r.content.metric_records.values():
            counts = {"num-examples", "num_examples"}  # fedssl's and the legacy layout's
            assert set(rec) - {"secagg-keys", *counts} <= set(CLEAR), set(rec)
            assert all(rec[k] == 1 for k in counts & set(rec))
        for c in r.content.config_records.values():
            for v in c.values():
                assert not (isinstance(v, float) and v in losses.values())


def test_values_outside_the_range_are_clipped_and_counted():
    glob, updates, _, plan, _, replies = _round(5, scale=6.0)  # N(0, 6): many beyond +-8
    outside = sum(int((u["w"].abs() > plan["clipping_range"]).sum()) for u in updates.values())
    assert outside > 0
    assert dict(replies[0].content["metrics"])["secagg_clipped"] == outside


def test_a_round_left_with_two_survivors_releases_nothing():
    # three clients, one gone before the masked-vector stage (stage 2): a mean of two would
    # let each survivor read the other's update from the model it gets back
    glob, updates, _, plan, grid, replies = _round(3, drop={1007: 2})
    assert replies and all(r.has_error() for r in replies)
    assert "fewer than the 3 that keep each one's update hidden" in replies[0].error.reason
    # and the server never unmasked: no unmask-stage message went out
    assert grid.stage == 3


def test_a_dropout_among_many_still_gives_the_mean_of_the_survivors():
    glob, updates, _, plan, _, replies = _round(10, drop={1000 + 7 * 3: 2})
    ok = [r for r in replies if not r.has_error()]
    assert len(ok) == 9 and len(replies) == 10
    alive = [u["w"] for i, u in updates.items() if i != 1021]
    mean = torch.stack(alive).double().mean(0) + glob["w"]
    step = 2 * plan["clipping_range"] / plan["quantization_range"]
    assert (from_record(ok[0].content["arrays"])["w"].double() - mean).abs().max() <= 1.01 * step


def test_the_tally_is_exact_for_large_counts():
    clip, qr, n = 8.0, 2**22, 7
    values = [[3 * 10**12 + i, i, 0, 2**40] for i in range(n)]
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    levels = sum(quantize([tally_encode(v, clip, qr)], clip, qr)[0].astype(np.int64)
                 for v in values)  # fmt: skip
    mean = (dequantize([levels], clip, qr)[0] - (n - 1) * clip) / n
    assert tally_decode(mean, n, clip, qr) == [sum(c) for c in zip(*values, strict=True)]


@pytest.mark.parametrize(
    "extra,match",
    [
        (["privacy.secagg.num_shares=4"], "must be odd"),
        (
            ["privacy.secagg.reconstruction_threshold=2", "privacy.secagg.num_shares=5"],
            "more than half",
        ),  # fmt: skip
        (["privacy.secagg.quantization_range=1073741824"], "wraps around"),
    ],
)
def test_settings_that_break_the_protocol_are_refused(tiny_fashion, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"data.root={tiny_fashion}", "data.num_clients=6",
                           "federation.min_clients=6", "federation.weighted=false",
                           "privacy.secagg.enabled=true", *extra])  # fmt: skip


def test_legacy_reply_refuses_a_request_without_the_plan():
    rd = RecordDict({"arrays": to_record({"w": torch.zeros(2)})})
    reply = RecordDict({"arrays": to_record({"w": torch.ones(2)}), "m": MetricRecord({})})
    with pytest.raises(ValueError, match="no plan"):
        legacy_reply(rd, reply)
