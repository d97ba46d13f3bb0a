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
