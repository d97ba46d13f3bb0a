"""Secure aggregation of a round's training replies with Flower's SecAgg+ (Bell et al. 2020):
the server learns the mean of the clients' updates and nothing of any single one.

Flower 1.42 runs SecAgg+ only on its legacy path (``SecAggPlusWorkflow`` over a legacy strategy
in a ``LegacyContext``, with ``secaggplus_mod`` on the clients), while fedssl's rounds run
through the Message API (:class:`~fedssl.federation.strategy.MergeStrategy`). The two meet at
the grid: :func:`secure_rounds` makes ``grid.send_and_receive`` of a round's train messages run
Flower's four SecAgg+ stages (setup, share keys, collect masked vectors, unmask) and answer
with one reply per client whose arrays are all the same — the global weights plus the mean
update — and whose metrics are the client's own; everything after that (bookkeeping,
checkpoints, client-level DP's noise) is fedssl's as in any round.

On a client, :func:`secure_aggregation_mod` hands SecAgg+ messages to Flower's
``secaggplus_mod`` and turns the fedssl reply into the legacy layout it reads: the *update*
(trained minus received floating tensors; integer ones keep the global value), quantised to
``quantization_range`` levels over ``[-clipping_range, clipping_range]`` and masked. Every
client counts once (the mean is unweighted). Each element of the mean is exact to within one
quantisation step, ``2 * clipping_range / quantization_range``, for updates inside the range;
larger elements are clipped to it, and counted: the count travels inside the masked vector
(a *tally*: non-negative integers as exact quantisation levels, summed by the protocol), so
the round reports how many values all clients together clipped, never whose.

Nothing else of a client travels in clear: its reply's metrics are only those the server's
bookkeeping needs (:data:`CLEAR`: its partition id and, under DP-SGD, the accountant's σ, rate
and steps); its example count is sent as 1, and :data:`SUMMED` metrics (the training loss)
reach the server only as their sum over the round's clients, inside the tally. A round whose
masked-vector stage keeps fewer than :data:`MIN_SURVIVORS` clients stops before the server
unmasks anything: a mean of two would let each survivor read the other's update from the model
sent back.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedssl.privacy import SECAGG_MODULUS, secagg_shares

log = logging.getLogger(__name__)

# torch and the records module load when a SecAgg+ round first needs them: the ClientApp
# imports this module, and a deployed client's process starts for every message

__all__ = [
    "secure_rounds",
    "secure_aggregation_mod",
    "legacy_reply",
    "secagg_plan",
    "KEYS",
    "CLEAR",
    "SUMMED",
    "MIN_SURVIVORS",
    "PLAN",
]


#: the metric a client's SecAgg+ reply names its tensors in (comma-separated, in order)
KEYS = "secagg-keys"
#: the config record of a masked-vector stage message that tells a client the plan's ranges
PLAN = "secagg-plan"
#: the reply metrics that travel in clear under SecAgg+: the server's bookkeeping needs them
#: (which partition replied; DP-SGD's accountant: σ, sampling rate and steps)
CLEAR = ("partition-id", "dp_noise", "dp_rate", "dp_steps")
#: metrics that reach the server only as their sum over the round's clients (in the tally);
#: the round reports their mean as ``secagg_mean_<name>``
SUMMED = ("train_loss",)
#: fewest clients whose masked vectors the server may unmask together: with two, each one
#: subtracts its own update from the mean and reads the other's
MIN_SURVIVORS = 3
#: fixed-point scale of a summed metric in the tally (1e-6 resolution)
_FIXED = 10**6


class _RoundStart(logging.Filter):
    """``secaggplus_mod`` warns "Restart from the setup stage" whenever a client's first
    SecAgg+ message of a run or round arrives after anything but the unmask stage: at every
    client's first round, expected, so not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Restart from the setup stage" not in record.getMessage()


logging.getLogger("flwr").addFilter(_RoundStart())


def secagg_plan(settings, sampled: int, clip_norm: float | None = None) -> dict:
    """Flower's ``SecAggPlusWorkflow`` arguments for ``sampled`` clients per round from a
    ``privacy.secagg`` section: shares and threshold (:func:`fedssl.privacy.secagg_shares`),
    the clipping range (``clip_norm`` of client-side
    clipping when given and the range is not set, else 8) and the quantisation range."""
    shares, threshold = secagg_shares(settings, sampled)
    clip = settings.clipping_range or (clip_norm if clip_norm else 8.0)
    return {
        "num_shares": int(shares),
        "reconstruction_threshold": int(threshold),
        "clipping_range": float(clip),
        "quantization_range": int(settings.quantization_range),
        "modulus_range": int(SECAGG_MODULUS),
    }


def _digits(qr: int) -> int:
    """Base-``qr`` digits of one tally integer: enough for 2^64."""
    d, cap = 1, qr
    while cap < 2**64:
        d, cap = d + 1, cap * qr
    return d


def tally_encode(values: list[int], clip: float, qr: int):
    """``values`` (non-negative integers) as one float array whose SecAgg+ quantisation is
    exact: each is written in base-``qr`` digits, and digit ``d`` becomes the value whose
    quantisation level is ``d``. Summed over clients and dequantised, :func:`tally_decode`
    reads back the sum of each value exactly."""
    import numpy as np

    levels, digits = [], _digits(qr)
    for v in values:
        v = min(max(int(v), 0), 2**64 - 1)
        for _ in range(digits):
            v, d = divmod(v, qr)
            levels.append(d)
    return np.asarray(levels, dtype=np.float64) * (2 * clip / qr) - clip


def tally_decode(mean, clients: int, clip: float, qr: int) -> list[int]:
    """The per-value sums over ``clients`` of :func:`tally_encode`'s arrays, from the
    protocol's dequantised mean ``mean`` of them."""
    import numpy as np

    levels = np.rint((np.asarray(mean, dtype=np.float64) + clip) * clients * qr / (2 * clip))
    d = _digits(qr)
    out = []
    for i in range(0, len(levels), d):
        out.append(int(sum(int(x) * qr**j for j, x in enumerate(levels[i : i + d]))))
    return out


def _tally_values(metrics: dict, clipped: int) -> list[int]:
    """A client's tally: its clipped-value count, then for each :data:`SUMMED` metric its
    positive and negative parts in fixed point and whether it had a finite value."""
    import math

    out = [int(clipped)]
    for k in SUMMED:
        v = metrics.get(k)
        ok = isinstance(v, int | float) and math.isfinite(v)
        fixed = round(float(v) * _FIXED) if ok else 0
        out += [max(fixed, 0), max(-fixed, 0), int(ok)]
    return out


def _tally_metrics(sums: list[int]) -> dict[str, float]:
    """The round's metrics from the summed tally: ``secagg_clipped`` (values clipped by all
    clients together) and ``secagg_mean_<name>`` of each :data:`SUMMED` metric."""
    out: dict[str, float] = {"secagg_clipped": int(sums[0])}
    for i, k in enumerate(SUMMED):
        pos, neg, n = sums[1 + 3 * i : 4 + 3 * i]
        if n:
            out[f"secagg_mean_{k}"] = (pos - neg) / _FIXED / n
    return out


def legacy_reply(request: RecordDict, reply: RecordDict) -> RecordDict:
    """A fedssl train reply in the legacy ``FitRes`` layout ``secaggplus_mod`` reads: the
    update of every floating tensor (against the received ``arrays``) as the parameters and a
    tally (:func:`tally_encode`: the values outside the clipping range, the :data:`SUMMED`
    metrics) after them; of the metrics only :data:`CLEAR` ones and :data:`KEYS`; weight 1.

    Raises:
        ValueError: a floating tensor that was not received, or a request without the plan.
    """
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from fedssl.federation.records import from_record

    received = from_record(request["arrays"])
    state = from_record(next(iter(reply.array_records.values())))
    names = list(state)
    floats = [k for k in names if state[k].is_floating_point()]
    missing = [k for k in floats if k not in received]
    if missing:
        raise ValueError(
            f"secure aggregation: {missing[0]!r} was not received, so it has no update"
        )
    if PLAN not in request.config_records:
        raise ValueError("secure aggregation: the train message carries no plan (secagg-plan)")
    plan = request.config_records[PLAN]
    clip, qr = float(plan["clipping_range"]), int(plan["quantization_range"])
    updates = [(state[k].double() - received[k].double()).numpy() for k in floats]
    clipped = int(sum(int((abs(u) > clip).sum()) for u in updates))
    sent = dict(next(iter(reply.metric_records.values()), {}))
    metrics = {k: sent[k] for k in CLEAR if k in sent}
    metrics.update({KEYS: ",".join(names), "num-examples": 1})
    updates.append(tally_encode(_tally_values(sent, clipped), clip, qr))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(updates), 1, metrics)
    return compat.fitres_to_recorddict(fitres, keep_input=True)


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """The ClientApp mod: SecAgg+ train messages go through Flower's ``secaggplus_mod`` (with
    the reply in :func:`legacy_reply`'s layout); every other message passes unchanged."""
    if (
        msg.metadata.message_type != MessageType.TRAIN
        or RECORD_KEY_CONFIGS not in msg.content.config_records
    ):
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod

    def legacy(m: Message, c: Context) -> Message:
        out = call_next(m, c)
        if out.has_error():
            return out
        return Message(content=legacy_reply(m.content, out.content), reply_to=m)

    return secaggplus_mod(msg, context, legacy)


class _Round:
    """The legacy strategy SecAgg+ drives for one round: it samples the clients fedssl's
    strategy asked, and keeps what the unmask stage hands to ``aggregate_fit``."""

    def __init__(self, node_ids: list[int]):
        self.node_ids = node_ids
        self.results: list | None = None
        self.failures: list = []

    def configure_fit(self, server_round, parameters, client_manager):
        from flwr.common import FitIns, Parameters

        empty = FitIns(Parameters(tensors=[], tensor_type=""), {})
        return [(SimpleNamespace(node_id=n), empty) for n in self.node_ids]

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = list(results), list(failures)
        return None, {}


def _workflow(contents: dict[int, RecordDict], plan: dict, timeout: float | None):
    from flwr.server.workflow import SecAggPlusWorkflow

    class Workflow(SecAggPlusWorkflow):
        """Flower's SecAgg+, whose masked-vector stage carries fedssl's train content (the
        global weights and the run's config) instead of legacy fit instructions."""

        halted = ""  # why the round stopped before unmasking, if it did

        def setup_stage(self, grid, context, state) -> bool:
            ok = super().setup_stage(grid, context, state)
            state.nid_to_fitins = {n: contents[n] for n in state.nid_to_fitins}
            return ok

        def collect_masked_vectors_stage(self, grid, context, state) -> bool:
            ok = super().collect_masked_vectors_stage(grid, context, state)
            if ok and len(state.active_node_ids) < MIN_SURVIVORS:
                self.halted = (
                    f"only {len(state.active_node_ids)} of {len(state.sampled_node_ids)} "
                    f"clients sent their masked vectors, fewer than the {MIN_SURVIVORS} that "
                    "keep each one's update hidden from the others: nothing was unmasked"
                )
                return False
            return ok

    return Workflow(max_weight=1.0, timeout=timeout, **plan)


def _mean_state(received: dict, result, clients: int, plan: dict) -> tuple[dict, dict]:
    """The global weights plus the securely aggregated mean update of ``clients``, and the
    round's tally metrics (:func:`_tally_metrics`)."""
    import numpy as np
    import torch
    from flwr.common import parameters_to_ndarrays

    names = str(result.metrics[KEYS]).split(",")
    arrays = parameters_to_ndarrays(result.parameters)
    clip, qr = plan["clipping_range"], plan["quantization_range"]
    tally = _tally_metrics(tally_decode(arrays[-1], clients, clip, qr))
    updates = iter(arrays[:-1])
    out = {}
    for k in names:
        g = received.get(k)
        if g is None:
            raise ValueError(f"secure aggregation: the clients sent {k!r}, which the server lacks")
        if g.is_floating_point():
            out[k] = (g.double() + torch.from_numpy(np.asarray(next(updates)))).to(g.dtype)
        else:
            out[k] = g
    return out, tally


def _run_round(send, messages: list[Message], plan: dict, timeout: float | None) -> list[Message]:
    """One round's train messages through SecAgg+ (stage messages go out by ``send``)."""
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    from fedssl.federation.records import from_record, to_record

    by_node = {m.metadata.dst_node_id: m for m in messages}
    rnd = int(messages[0].content["config"]["server-round"])
    round_ = _Round(list(by_node))
    ctx = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=round_)
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
    ctx.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    # one RecordDict per client: Flower's strategy sends one to all, and each client's
    # masked-vector stage adds its own ciphertexts to it
    ranges = ConfigRecord({k: plan[k] for k in ("clipping_range", "quantization_range")})
    contents = {
        n: RecordDict({**dict(m.content.items()), PLAN: ranges}) for n, m in by_node.items()
    }
    workflow = _workflow(contents, plan, timeout)
    workflow(SimpleNamespace(send_and_receive=send), ctx)
    if not round_.results:
        why = (
            workflow.halted
            or "; ".join(str(f) for f in round_.failures[:3])
            or (
                f"a stage left some client with fewer than {plan['reconstruction_threshold']} of "
                f"its {plan['num_shares']} neighbours (itself included) answering"
            )
        )
        reason = f"secure aggregation halted in round {rnd}: {why}"
        return [Message(error=Error(code=0, reason=reason), reply_to=m) for m in messages]
    received = from_record(messages[0].content["arrays"])
    mean, tally = _mean_state(received, round_.results[0][1], len(round_.results), plan)
    arrays = to_record(mean)
    if tally["secagg_clipped"]:
        log.warning(
            "round %d: %d update values outside +-%g were clipped before masking (raise "
            "privacy.secagg.clipping_range)", rnd, tally["secagg_clipped"], plan["clipping_range"]
        )  # fmt: skip
    replies, answered = [], set()
    for proxy, fitres in round_.results:
        metrics = {k: v for k, v in fitres.metrics.items() if k != KEYS}
        metrics.update(tally)  # the round's, the same in every reply
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
        replies.append(Message(content=content, reply_to=by_node[proxy.node_id]))
        answered.add(proxy.node_id)
    why = str(round_.failures[0]) if round_.failures else "did not take part in every stage"
    for n, m in by_node.items():
        if n not in answered:
            replies.append(
                Message(error=Error(code=0, reason=f"secure aggregation: {why}"), reply_to=m)
            )
    return replies


def secure_rounds(grid, plan: dict, timeout: float | None = None):
    """Make ``grid``'s training rounds run through SecAgg+ (``plan``: :func:`secagg_plan`);
    evaluation and every other message go out as before. Returns ``grid``."""
    send = grid.send_and_receive

    def send_and_receive(messages, *, timeout: float | None = timeout):
        messages = list(messages)
        if not messages or messages[0].metadata.message_type != MessageType.TRAIN:
            return send(messages, timeout=timeout)
        return _run_round(send, messages, plan, timeout)

    grid.send_and_receive = send_and_receive  # the instance's: the strategy calls it
    return grid
