"""The strategy's aggregation step goes through fedssl.aggregation.merge (hand values)."""

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedssl.federation.records import travelling_keys
from fedssl.federation.strategy import MergeStrategy, merge_contents


def reply(w, n):
    return RecordDict(
        {
            "arrays": ArrayRecord(
                {"w": torch.tensor(w), "bn.num_batches_tracked": torch.tensor(n)}
            ),
            "metrics": MetricRecord({"num-examples": n, "local_acc": 0.5}),
        }
    )


def test_weighted_avg_is_fedavg():
    merged, metrics = merge_contents([reply([1.0, -1.0], 1), reply([3.0, -3.0], 3)], "avg")
    assert torch.allclose(merged["w"], torch.tensor([2.5, -2.5]))
    assert int(merged["bn.num_batches_tracked"]) == 3
    assert [m["num-examples"] for m in metrics] == [1, 3]


def test_unweighted_and_other_methods():
    c = [reply([1.0, -4.0], 1), reply([3.0, 2.0], 3)]
    assert torch.allclose(
        merge_contents(c, "avg", weighted=False)[0]["w"], torch.tensor([2.0, -1.0])
    )
    assert torch.allclose(merge_contents(c, "max")[0]["w"], torch.tensor([3.0, 2.0]))
    assert torch.allclose(merge_contents(c, "absmax")[0]["w"], torch.tensor([3.0, -4.0]))
    assert torch.allclose(merge_contents(c, "absmax_magnitude")[0]["w"], torch.tensor([3.0, 4.0]))


def test_bad_replies():
    no_weight = RecordDict(
        {"arrays": ArrayRecord({"w": torch.ones(2)}), "metrics": MetricRecord({"a": 1})}
    )
    with pytest.raises(ValueError, match="num-examples"):
        merge_contents([reply([1.0, 1.0], 1), no_weight], "avg")
    with pytest.raises(ValueError, match="client 1 has shape"):
        merge_contents([reply([1.0, 1.0], 1), reply([1.0], 1)], "avg")
    nan = reply([float("nan"), 1.0], 1)
    with pytest.raises(ValueError, match="client 1 holds a non-finite"):
        merge_contents([reply([1.0, 1.0], 1), nan], "avg")


def test_strategy_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown merge method"):
        MergeStrategy(method="mean")


def test_travelling_keys():
    sd = {"backbone.a": 0, "backbone.b": 0, "head.w": 0}
    assert travelling_keys(sd, include=["backbone."]) == ["backbone.a", "backbone.b"]
    assert travelling_keys(sd, exclude=["head."]) == ["backbone.a", "backbone.b"]
    assert travelling_keys(sd) == list(sd)


def test_records_round_trip_zero_copy():
    from flwr.app import ArrayRecord

    from fedssl.federation.records import from_record, num_bytes, to_record

    sd = {
        "a": torch.randn(3, 4),
        "t": torch.randn(5, 2).t(),
        "n": torch.tensor(7),
        "h": torch.ones(2, dtype=torch.float16),
    }
    rec = to_record(sd)
    assert isinstance(rec, ArrayRecord)
    out = from_record(rec)
    assert all(torch.equal(out[k], sd[k]) and out[k].dtype == sd[k].dtype for k in sd)
    copied = from_record(rec, copy=True)
    copied["a"].add_(1.0)  # copies are writable and independent
    assert torch.equal(from_record(rec)["a"], sd["a"])
    assert num_bytes(sd) == 48 + 40 + 8 + 4


def test_a_state_dict_travels_as_one_packed_array_in_its_order_and_reads_back_without_copy():
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from fedssl.federation.records import PACKED, from_record, to_record

    w = torch.randn(4, 3)
    sd = {
        "z.last": torch.arange(5, dtype=torch.int64),
        "a.w": w,
        "a.tied": w,  # shares memory with a.w (tied weights)
        "b.mask": torch.tensor([True, False, True]),
        "c.bf": torch.randn(2, 2).to(torch.bfloat16),
        "d.empty": torch.empty(0, 7),
        "e.n": torch.tensor(3.5, dtype=torch.float64),
    }
    rec = to_record(sd)
    assert list(rec) == [PACKED]  # one array: one transfer per message, not seven
    out = from_record(rec)
    assert list(out) == list(sd)  # the sender's order, not the packer's
    for k in sd:
        assert out[k].dtype == sd[k].dtype and out[k].shape == sd[k].shape, k
        assert torch.equal(out[k], sd[k]), k
    packed = rec[PACKED].data
    # zero-copy: the tensors read straight from the message's bytes
    buf_lo = np.frombuffer(packed, np.uint8).ctypes.data
    assert buf_lo <= out["z.last"].data_ptr() < buf_lo + len(packed)
    # Flower's own one-array-per-tensor records still read
    plain = ArrayRecord({"w": Array(np.ones((2, 2), np.float32))})
    assert torch.equal(from_record(plain)["w"], torch.ones(2, 2))
    # a malformed or mixed packed record is refused with a clear error
    bad = ArrayRecord({PACKED: Array(np.frombuffer(b"\xff" * 16, dtype=np.uint8))})
    with pytest.raises(ValueError, match="malformed packed record"):
        from_record(bad)
    mixed = ArrayRecord({PACKED: rec[PACKED], "x": Array(np.ones(1, np.float32))})
    with pytest.raises(ValueError, match="alone"):
        from_record(mixed)


def test_server_momentum_is_fedavgm():
    """v = beta * v + (merged - global); new global = global + lr * v (hand-computed)."""
    s = MergeStrategy(server_momentum=0.5, server_lr=2.0)
    assert s.uses_server_optimizer
    s._global = {"w": torch.tensor([1.0, 0.0]), "n": torch.tensor(3)}
    out = s.server_step({"w": torch.tensor([2.0, -1.0]), "n": torch.tensor(5)})
    # d = [1, -1]; v = d; global + 2 v
    assert torch.equal(out["w"], torch.tensor([3.0, -2.0])) and int(out["n"]) == 5
    s._global = {"w": out["w"], "n": out["n"]}
    out = s.server_step({"w": torch.tensor([3.0, -1.0]), "n": torch.tensor(5)})
    # d = [0, 1]; v = 0.5 * [1, -1] + [0, 1] = [0.5, 0.5]; global + 2 v = [4, -1]
    assert torch.equal(out["w"], torch.tensor([4.0, -1.0]))
    assert torch.equal(s.velocity["w"], torch.tensor([0.5, 0.5]))


def test_plain_merge_uses_no_server_optimizer_and_bad_values_fail():
    assert not MergeStrategy().uses_server_optimizer
    with pytest.raises(ValueError, match="server_momentum"):
        MergeStrategy(server_momentum=1.0)
    with pytest.raises(ValueError, match="server_lr"):
        MergeStrategy(server_lr=0.0)


def test_resumed_velocity_is_used():
    s = MergeStrategy(server_momentum=0.5, velocity={"w": torch.tensor([2.0])})
    s._global = {"w": torch.tensor([0.0])}
    out = s.server_step({"w": torch.tensor([1.0])})
    assert torch.equal(out["w"], torch.tensor([2.0]))  # 0.5 * 2 + 1


def test_merge_does_not_depend_on_which_client_answered_first():
    """Float sums depend on their order: replies are merged in partition-id order, so two runs
    of one config give the same bits whatever the arrival order."""
    import itertools

    def client(pid, w, n):
        return RecordDict(
            {
                "arrays": ArrayRecord({"w": torch.tensor(w, dtype=torch.float32)}),
                "metrics": MetricRecord({"num-examples": n, "partition-id": pid}),
            }
        )

    replies = [client(0, [1e8, 3.3], 1), client(1, [1.0, 1e-3], 3), client(2, [-1e8, 7.7], 7)]
    merged = {
        tuple(merge_contents([replies[i] for i in p], "avg")[0]["w"].tolist())
        for p in itertools.permutations(range(3))
    }
    assert len(merged) == 1


def test_the_deployment_grid_is_polled_for_replies_every_fifth_of_a_second(monkeypatch):
    """Flower's HTTP grid sleeps 3 s between polls; poll_replies keeps its contract (push,
    then pull until every message has a reply or the timeout passed) at REPLY_POLL_S."""
    from types import SimpleNamespace

    from fedssl.federation import server_app
    from fedssl.federation.server_app import REPLY_POLL_S, poll_replies

    class HttpLikeGrid:  # no pull_interval, like flwr's deployment grid
        def __init__(self):
            self.pulls = 0

        def push_messages(self, messages):
            return [f"id{i}" for i, _ in enumerate(messages)]

        def pull_messages(self, ids):
            self.pulls += 1
            due = {1: ["id0"], 3: ["id1"]}.get(self.pulls, [])
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in due]

    sleeps: list[float] = []
    monkeypatch.setattr(server_app.time, "sleep", sleeps.append)
    grid = poll_replies(HttpLikeGrid())
    replies = grid.send_and_receive(["m0", "m1"], timeout=None)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["id0", "id1"]
    assert grid.pulls == 3 and sleeps == [REPLY_POLL_S, REPLY_POLL_S] and REPLY_POLL_S <= 0.25

    class SimGrid(HttpLikeGrid):
        pull_interval = 0.1  # the simulation's grid keeps its own loop

    sim = SimGrid()
    assert "send_and_receive" not in vars(poll_replies(sim))


def test_every_server_optimizer_a_config_accepts_has_one_strategy_class():
    from fedssl.config import SERVER_OPTIMIZERS
    from fedssl.federation.strategy import STRATEGIES, MergeStrategy, ServerOptMerge

    assert tuple(STRATEGIES) == SERVER_OPTIMIZERS
    for name, cls in STRATEGIES.items():
        assert issubclass(cls, MergeStrategy)
        assert issubclass(cls, ServerOptMerge) == (name != "none")


def test_a_server_optimizer_keeps_the_merge_it_was_given():
    from fedssl.federation.strategy import build_strategy

    s = build_strategy("adam", {"eta": 0.02}, method="median", weighted=False)
    assert (s.method, s.weighted, s.eta) == ("median", False, 0.02)
    with pytest.raises(ValueError, match="brings its own server learning rate"):
        build_strategy("yogi", server_momentum=0.9)
