"""``MergeStrategy``: Flower's FedAvg message flow with the aggregation step delegated to
:func:`fedssl.aggregation.merge` (avg = FedAvg, or max / absmax / median / trimmed_mean ...).

It also keeps each round's per-client metrics (local accuracy, loss, time) for the run log and
supports a round offset so a resumed run continues its numbering.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedYogi

from fedssl.aggregation import first_non_finite, merge, resolve_method
from fedssl.aggregation.dp import noise_std, noised_mean
from fedssl.federation.client_work import CLIP_KEY
from fedssl.federation.records import from_record, num_bytes, to_record

__all__ = [
    "MergeStrategy",
    "FederationFailed",
    "EngineFailed",
    "merge_contents",
    "build_strategy",
    "STRATEGIES",
    "ServerOptMerge",
    "AdamMerge",
    "YogiMerge",
    "AdagradMerge",
]

log = logging.getLogger(__name__)


def merge_contents(
    contents: list[RecordDict],
    method: str,
    weighted: bool = True,
    weight_key: str = "num-examples",
    keys: Iterable[str] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Merge the arrays of clients' reply contents; return the merged state dict and metrics.

    Each content holds one ArrayRecord (the weights) and one MetricRecord with ``weight_key``.
    Replies are merged in ``partition-id`` order when every one has it, so the result does not
    depend on which client answered first.

    Raises:
        ValueError: a content lacks its arrays or its weight, or :func:`merge` refuses the input.
    """
    state_dicts, metrics = [], []
    for i, c in enumerate(contents):
        if len(c.array_records) != 1 or len(c.metric_records) != 1:
            raise ValueError(f"reply {i} must hold one ArrayRecord and one MetricRecord")
        m = dict(next(iter(c.metric_records.values())))
        if weighted and weight_key not in m:
            raise ValueError(f"reply {i} has no {weight_key!r} metric to weight by")
        metrics.append(m)
        state_dicts.append(from_record(next(iter(c.array_records.values()))))
    if all("partition-id" in m for m in metrics):
        # merge in client order, not arrival order: float sums depend on their order, and two
        # runs of one config must give the same bits
        order = sorted(range(len(metrics)), key=lambda i: metrics[i]["partition-id"])
        metrics = [metrics[i] for i in order]
        state_dicts = [state_dicts[i] for i in order]
    weights = [float(m[weight_key]) for m in metrics] if weighted else None
    return merge(state_dicts, method, weights=weights, keys=keys), metrics


class FederationFailed(RuntimeError):
    """Too many consecutive rounds ended without enough usable client replies to merge."""


class EngineFailed(FederationFailed):
    """The engine that carries the messages (Flower's simulation runtime, Ray) could not start
    or stopped; the message names the cause in one line."""


_FLOWER_REASON = re.compile(r"<class '([^']*)'>:<'(.*)'>", re.S)
_RAISED = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit|Interrupt|Failed)): (.*)$")
_WRAPPERS = ("ClientAppException", "RayTaskError")


def reason_line(reason: str) -> str:
    """A client's error in one line, ``ExceptionType: message``: from the traceback a reason
    carries (the simulation engine wraps the client's exception in Ray's and Flower's), its
    client's own exception; else Flower's ``<class 'mod.ValueError'>:<'message'>`` as
    ``ValueError: message``; else the reason's last line."""
    text = str(reason).strip()
    raised = [
        m
        for line in text.splitlines()
        if (m := _RAISED.match(line)) and not m.group(1).startswith(_WRAPPERS)
    ]
    if raised:
        return f"{raised[-1].group(1)}: {raised[-1].group(2).strip()}"
    m = _FLOWER_REASON.search(text)
    if m:
        cls = m.group(1).rsplit(".", 1)[-1]
        lines = m.group(2).strip().splitlines()
        last = lines[-1].strip() if lines else ""
        return f"{cls}: {last}" if last else cls
    lines = text.splitlines()
    return lines[-1].strip() if lines else "error"


def _non_finite_key(content: RecordDict) -> str | None:
    for record in content.array_records.values():
        bad = first_non_finite(from_record(record))
        if bad is not None:
            return bad
    return None


#: MergeStrategy's own arguments (the rest go to Flower's FedAvg).
MERGE_ARGS = (
    "method",
    "weighted",
    "keys",
    "round_offset",
    "eval_every",
    "total_rounds",
    "server_momentum",
    "server_lr",
    "velocity",
    "min_replies",
    "central",
    "clip_norm",
)


class MergeStrategy(FedAvg):
    """FedAvg's sampling and messaging; merging by any fedssl aggregation method.

    Args:
        method: a :data:`fedssl.aggregation.METHODS` name.
        weighted: weight ``avg`` by each client's ``num-examples`` (FedAvg); else equal weights.
        keys: merge only these names (the travelling keys); None: every name received.
        round_offset: rounds already completed (resume); added to Flower's round counter.
        eval_every: federated evaluation (when ``fraction_evaluate`` > 0) every k rounds.
        total_rounds: the run's last round (always evaluated); 0: unknown.
        server_momentum: FedAvgM's server momentum (0: plain FedAvg / merge).
        server_lr: server learning rate applied to the merged update (1: take the merge).
        velocity: the server momentum buffer to resume from.
        min_replies: merge only when at least this many usable replies arrived (at most the
            number of clients asked that round; clients that failed or timed out are left out and
            logged); otherwise keep the global model.
        central: client-level DP (a ``privacy.central`` section, used when enabled): the merge
            is :func:`fedssl.aggregation.dp.noised_mean` of the replies (``method`` avg).
        clip_norm: the clipping norm to start from (adaptive clipping, resumed); None: the
            section's ``clipping_norm``.
        **kwargs: Flower ``FedAvg`` arguments: ``fraction_train``, ``min_train_nodes``,
            ``min_available_nodes`` ...
    """

    #: the merged weights go out packed (one array: :func:`fedssl.federation.records.to_record`)
    packs_records = True

    def __init__(self, **kwargs):
        merge_args = {k: kwargs.pop(k) for k in MERGE_ARGS if k in kwargs}
        kwargs.setdefault("fraction_evaluate", 0.0)
        super().__init__(**kwargs)
        self._setup(**merge_args)

    def _setup(
        self,
        method: str = "avg",
        weighted: bool = True,
        keys: Iterable[str] | None = None,
        round_offset: int = 0,
        eval_every: int = 1,
        total_rounds: int = 0,
        server_momentum: float = 0.0,
        server_lr: float = 1.0,
        velocity: dict[str, torch.Tensor] | None = None,
        min_replies: int = 1,
        central=None,
        clip_norm: float | None = None,
    ) -> None:
        resolve_method(method)  # fail fast on a bad name
        self.central = central if central is not None and central.enabled else None
        self.clip_norm = clip_norm or (self.central.clipping_norm if self.central else 0.0)
        if self.central is not None and method != "avg":
            raise ValueError(f"client-level DP merges by avg, not {method!r}")
        if min_replies < 1:
            raise ValueError(f"min_replies must be >= 1, got {min_replies}")
        self.min_replies = min_replies
        self.method = method
        self.weighted = weighted
        self.keys = None if keys is None else list(keys)
        self.round_offset = round_offset
        self.eval_every = max(1, eval_every)
        if not 0.0 <= server_momentum < 1.0:
            raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum}")
        if server_lr <= 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_momentum, self.server_lr = server_momentum, server_lr
        self.velocity: dict[str, torch.Tensor] = dict(velocity or {})
        self._global: dict[str, torch.Tensor] = {}
        self.total_rounds = total_rounds
        self.client_metrics: dict[int, list[dict]] = {}
        #: every usable reply's metrics per round, merged or not (privacy accounting: a round
        #: whose replies reached the server spends budget even when it merged nothing)
        self.replied: dict[int, list[dict]] = {}
        self.eval_metrics: dict[int, list[dict]] = {}
        self.failures: dict[int, int] = {}
        self.round_info: dict[int, dict] = {}
        #: why clients' replies were unusable, per round (errors, timeouts, NaN/inf weights)
        self.round_errors: dict[int, list[str]] = {}
        #: consecutive rounds that kept the global model for lack of usable replies
        self.failed_streak = 0
        #: rounds (global numbers) whose replies were merged
        self.merged_rounds: list[int] = []
        self._t0 = 0.0

    @property
    def uses_server_optimizer(self) -> bool:
        """Whether the merge result is applied through server momentum / learning rate."""
        return self.server_momentum > 0.0 or self.server_lr != 1.0

    def server_step(self, merged: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """FedAvgM (Hsu et al. 2019): treat ``merged - global`` as the round's update ``d``;
        ``v = momentum * v + d``; new global = ``global + server_lr * v``. Non-float tensors
        (BatchNorm counters) take the merged value. Without momentum and with lr 1 this is the
        merge itself."""
        out = {}
        for k, m in merged.items():
            g = self._global.get(k)
            if g is None or not m.is_floating_point():
                out[k] = m
                continue
            d = m.to(torch.float32) - g.to(torch.float32)
            v = self.velocity.get(k)
            v = d if v is None else v.mul_(self.server_momentum).add_(d)
            self.velocity[k] = v
            out[k] = (g.to(torch.float32) + self.server_lr * v).to(m.dtype)
        return out

    def is_eval_round(self, rnd: int) -> bool:
        """Evaluate every ``eval_every`` rounds and always after the last one."""
        return rnd % self.eval_every == 0 or (self.total_rounds > 0 and rnd >= self.total_rounds)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling, with the global round number in ``config["server-round"]``."""
        self._t0 = time.perf_counter()
        if self.uses_server_optimizer or self.central is not None:
            self._global = from_record(arrays)
        if self.central is not None:  # client-side clipping reads it (adaptive: it moves)
            config[CLIP_KEY] = float(self.clip_norm)
        msgs = list(super().configure_train(server_round + self.round_offset, arrays, config, grid))
        rnd = server_round + self.round_offset
        info = self.round_info.setdefault(rnd, {})
        info["bytes_down"] = len(msgs) * num_bytes(from_record(arrays))
        info["sent"] = len(msgs)
        return msgs

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation of the merged weights, on evaluation rounds only."""
        rnd = server_round + self.round_offset
        if not self.is_eval_round(rnd):
            return []
        self._t_eval = time.perf_counter()
        return super().configure_evaluate(rnd, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Keep each client's evaluation metrics; return their weighted mean (Flower's)."""
        rnd = server_round + self.round_offset
        replies = list(replies)
        if replies and getattr(self, "_t_eval", None) is not None:
            self.round_info.setdefault(rnd, {})["eval_phase_s"] = time.perf_counter() - self._t_eval
        valid, errors = self._check_and_log_replies(replies, is_train=False)
        for m in errors:
            log.warning(
                "round %d: evaluation on node %s failed: %s",
                rnd,
                m.metadata.src_node_id,
                reason_line(m.error.reason),
            )
        self.eval_metrics[rnd] = sorted(
            (dict(next(iter(m.content.metric_records.values()))) for m in valid),
            key=lambda m: m.get("partition-id", 0),
        )
        return super().aggregate_evaluate(server_round, valid) if valid else None

    def _finite_only(self, rnd: int, replies: list[Message]) -> list[RecordDict]:
        """Contents of the replies whose weights are all finite; the others count as failures."""
        kept = []
        for m in replies:
            bad = _non_finite_key(m.content)
            if bad is None:
                kept.append(m.content)
                continue
            self.failures[rnd] += 1
            self.round_errors.setdefault(rnd, []).append(
                f"node {m.metadata.src_node_id}: non-finite value in {bad!r}"
            )
            log.warning(
                "round %d: node %s sent a non-finite value in %r; its reply is left out",
                rnd,
                m.metadata.src_node_id,
                bad,
            )
        return kept

    def _keep_global(self, rnd: int, usable: int, need: int) -> tuple[None, None]:
        """Too few usable replies: log it, record the round, keep the global model."""
        log.warning(
            "round %d: %d usable client replies, fewer than the %d required; the global model "
            "is unchanged",
            rnd,
            usable,
            need,
        )
        self.round_info.setdefault(rnd, {}).update(clients=0, failures=self.failures[rnd])
        self.failed_streak += 1
        return None, None

    def failed(self, rnd: int) -> bool:
        """Whether round ``rnd`` kept the global model for lack of usable replies."""
        return self.round_info.get(rnd, {}).get("clients") == 0

    def failed_rounds(self) -> dict[int, list[str]]:
        """Every round that kept the global model, with what its clients said."""
        return {
            r: self.round_errors.get(r, []) or ["no reply arrived"]
            for r in sorted(self.round_info)
            if self.failed(r)
        }

    def first_error(self) -> str:
        """The first client error of the run, in one line (or that no reply arrived)."""
        for r in sorted(self.round_errors):
            if self.round_errors[r]:
                return self.round_errors[r][0].split(": ", 1)[-1]
        return "no reply arrived"

    def failure_report(self, last: int) -> str:
        """What went wrong in the failed rounds up to ``last`` (for :class:`FederationFailed`)."""
        rounds = range(last - self.failed_streak + 1, last + 1)
        reasons: list[str] = []
        for r in rounds:
            for e in self.round_errors.get(r, []):
                if e not in reasons:
                    reasons.append(e)
        shown = "; ".join(reasons[:6]) or "no reply arrived"
        return (
            f"rounds {rounds.start}-{rounds.stop - 1}: no round had the {self.min_replies} "
            f"usable client replies it needs (federation.min_replies); the clients said: {shown}"
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Merge the replies' arrays with ``self.method``; keep per-client metrics."""
        rnd = server_round + self.round_offset
        replies = list(replies)
        valid, errors = self._check_and_log_replies(replies, is_train=True)
        self.failures[rnd] = len(errors)
        sent = self.round_info.get(rnd, {}).get("sent", len(replies))
        if len(replies) < sent:
            log.warning(
                "round %d: %d of %d clients did not reply within the timeout; going on without",
                rnd,
                sent - len(replies),
                sent,
            )
        self.round_info.setdefault(rnd, {})["timeouts"] = max(0, sent - len(replies))
        if len(replies) < sent:
            self.round_errors.setdefault(rnd, []).append(
                f"{sent - len(replies)} of {sent} clients did not reply within the timeout"
            )
        need = min(self.min_replies, max(1, sent))  # never more than were asked this round
        for m in errors:
            log.warning(
                "round %d: client node %s failed: %s",
                rnd,
                m.metadata.src_node_id,
                reason_line(m.error.reason),
            )
            self.round_errors.setdefault(rnd, []).append(
                f"node {m.metadata.src_node_id}: {reason_line(m.error.reason)}"
            )
        self.replied[rnd] = [dict(next(iter(m.content.metric_records.values()), {})) for m in valid]
        if len(valid) < need:
            return self._keep_global(rnd, len(valid), need)
        contents = [m.content for m in valid]
        t = time.perf_counter()
        if self.central is not None:
            contents = self._finite_only(rnd, valid)
            if len(contents) < need:
                return self._keep_global(rnd, len(contents), need)
            merged, metrics = self._private_merge(rnd, contents, sent)
        else:
            merged, metrics, contents = self._merge(rnd, valid, contents, need)
            if merged is None:
                return self._keep_global(rnd, len(contents), need)
        if self.uses_server_optimizer:
            merged = self.server_step(merged)
        # what the clients sent, for the run directory (received-keys.json)
        self.received_keys = sorted(
            set().union(*(from_record(next(iter(c.array_records.values()))) for c in contents))
        )
        self.failed_streak = 0
        self.merged_rounds.append(rnd)
        merge_s = time.perf_counter() - t
        self.client_metrics[rnd] = sorted(metrics, key=lambda m: m.get("partition-id", 0))
        self.round_info.setdefault(rnd, {}).update(
            {
                "clients": len(contents),
                "failures": self.failures[rnd],
                "merge_s": merge_s,
                "train_phase_s": t - self._t0,
                "bytes_up": len(contents) * num_bytes(merged),
            }
        )
        merged_record = to_record(merged, packed=self.packs_records)
        return merged_record, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def _merge(self, rnd: int, valid: list[Message], contents: list[RecordDict], need: int):
        """``self.method``'s merge of ``contents``; replies holding NaN/inf are left out (the
        scan runs only when the merge refuses, off the hot path). Returns the merged state
        (None: too few usable replies), the metrics and the contents merged."""
        try:
            merged, metrics = merge_contents(
                contents, self.method, self.weighted, self.weighted_by_key, self.keys
            )
        except ValueError:
            contents = self._finite_only(rnd, valid)
            if len(contents) == len(valid):
                raise
            if len(contents) < need:
                return None, None, contents
            merged, metrics = merge_contents(
                contents, self.method, self.weighted, self.weighted_by_key, self.keys
            )
        return merged, metrics, contents

    def _private_merge(self, rnd: int, contents: list[RecordDict], sent: int):
        """Client-level DP's merge: :func:`~fedssl.aggregation.dp.noised_mean` over the
        ``sent`` clients asked (replies in client order); records the updates' norms."""
        c = self.central
        pairs = []
        for content in contents:
            m = dict(next(iter(content.metric_records.values())))
            sd = from_record(next(iter(content.array_records.values())))
            if self.keys is not None:
                sd = {k: v for k, v in sd.items() if k in self.keys}
            pairs.append((m, sd))
        pairs.sort(key=lambda p: p[0].get("partition-id", 0))
        gen = torch.Generator()
        if c.noise_seed is not None:
            gen.manual_seed(int(c.noise_seed) * 1_000_003 + rnd)
        else:
            import secrets

            gen.manual_seed(secrets.randbits(63))
        n, clip = max(sent, len(pairs)), self.clip_norm
        sigma, count_std = float(c.noise_multiplier), 0.0
        if c.adaptive:  # the count of unclipped updates takes its share of the noise
            from flwr.supercore.differential_privacy import compute_adaptive_noise_params

            count_std, sigma = compute_adaptive_noise_params(sigma, n, c.clipped_count_stddev)
        merged, norms = noised_mean(self._global, [sd for _, sd in pairs], clip, sigma, n, gen)
        if c.clipping == "client":  # the server saw clipped updates; the clients say the norms
            # (not under SecAgg+, where no client metric of the update travels in clear)
            norms = [float(m["update_norm"]) for m, _ in pairs if "update_norm" in m]
        if c.adaptive:  # Andrew et al. 2019: C <- C exp(-lr (noised share unclipped - target))
            unclipped = sum(x <= clip for x in norms)
            noise = float(torch.randn((), dtype=torch.float64, generator=gen)) * count_std
            self.clip_norm = clip * math.exp(
                -c.clip_lr * ((unclipped + noise) / n - c.target_quantile)
            )
        info = {"dp_clipping_norm": clip, "dp_noise_std": noise_std(sigma, clip, n)}
        if sigma == 0 and norms:  # no privacy claimed (clipping alone): its record is published
            # (with noise, the un-noised norms and clipped share stay on the server: outside ε)
            info.update(
                dp_update_norm_max=max(norms), dp_clipped=sum(x > clip for x in norms) / len(norms)
            )
        self.round_info.setdefault(rnd, {}).update(info)
        return merged, [m for m, _ in pairs]


class ServerOptMerge:
    """Flower's server optimizer (FedAdam, FedYogi, FedAdagrad; Reddi et al. 2020) over
    fedssl's merge: the merged result is the "pseudo-gradient" Flower's optimizer applies with
    its own server learning rate ``eta`` and moments. Used as the first base of
    :class:`AdamMerge`, :class:`YogiMerge` and :class:`AdagradMerge` (MRO: this class ->
    Flower's optimizer -> :class:`MergeStrategy` -> FedAvg), so fedssl's bookkeeping and dtypes
    stay. Its records are one array per tensor: Flower's update computes on them.

    Args:
        opt_args: Flower's FedOpt parameters (``eta``, ``beta_1``, ``beta_2``, ``tau``).
        moments: the optimizer's saved first / second moments (``m.<key>`` / ``v.<key>``), to
            resume with.
        **kwargs: :class:`MergeStrategy` and Flower ``FedAvg`` arguments.

    Raises:
        ValueError: server momentum or a server learning rate beside the optimizer's own.
    """

    packs_records = False
    #: its ``federation.server_opt`` name
    server_opt: str = ""

    def __init__(self, opt_args: dict | None = None, moments=None, **kwargs):
        if kwargs.get("server_momentum") or kwargs.get("server_lr", 1.0) != 1.0:
            raise ValueError(
                f"server_opt {self.server_opt!r} brings its own server learning rate and "
                "moments; leave server_momentum at 0 and server_lr at 1"
            )
        merge_args = {k: kwargs.pop(k) for k in MERGE_ARGS if k in kwargs}
        kwargs.setdefault("fraction_evaluate", 0.0)
        # Flower's optimizer takes its own and FedAvg's arguments and hands FedAvg's on, through
        # MergeStrategy.__init__, which sets up the default merge; then the merge asked for
        super().__init__(**(opt_args or {}), **kwargs)
        self._setup(**merge_args)
        if moments:
            self.m_t = {k[2:]: v.numpy() for k, v in moments.items() if k.startswith("m.")}
            self.v_t = {k[2:]: v.numpy() for k, v in moments.items() if k.startswith("v.")}

    def aggregate_train(self, server_round, replies):
        current = dict(self.current_arrays or {})
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        # Flower's update is float64 numpy; keep each tensor's dtype as it was
        state = from_record(arrays)
        typed = {
            k: v.to(torch.from_numpy(current[k]).dtype) if k in current else v
            for k, v in state.items()
        }
        return to_record(typed, packed=False), metrics

    def moments(self) -> dict[str, torch.Tensor]:
        """The optimizer state to save for --resume."""
        out = {}
        for prefix, d in (("m.", self.m_t), ("v.", getattr(self, "v_t", None))):
            for k, v in (d or {}).items():
                out[prefix + k] = torch.from_numpy(np.ascontiguousarray(v))
        return out


class AdamMerge(ServerOptMerge, FedAdam, MergeStrategy):
    """FedAdam over fedssl's merge (:class:`ServerOptMerge`)."""

    server_opt = "adam"


class YogiMerge(ServerOptMerge, FedYogi, MergeStrategy):
    """FedYogi over fedssl's merge (:class:`ServerOptMerge`)."""

    server_opt = "yogi"


class AdagradMerge(ServerOptMerge, FedAdagrad, MergeStrategy):
    """FedAdagrad over fedssl's merge (:class:`ServerOptMerge`)."""

    server_opt = "adagrad"


#: ``federation.server_opt`` -> its strategy class (``none``: the merge itself)
STRATEGIES: dict[str, type[MergeStrategy]] = {
    "none": MergeStrategy,
    **{c.server_opt: c for c in (AdamMerge, YogiMerge, AdagradMerge)},
}


def build_strategy(
    server_opt: str = "none",
    opt_args: dict | None = None,
    moments: dict[str, torch.Tensor] | None = None,
    **kwargs,
) -> MergeStrategy:
    """The round strategy of ``federation.server_opt`` (:data:`STRATEGIES`): the merge itself
    (FedAvgM through its ``server_momentum``), or a :class:`ServerOptMerge`.

    Raises:
        ValueError: unknown ``server_opt``, or FedOpt combined with server momentum.
    """
    if server_opt not in STRATEGIES:
        raise ValueError(
            f"unknown server optimizer {server_opt!r}; choose one of {', '.join(STRATEGIES)}"
        )
    if server_opt == "none":
        return MergeStrategy(**kwargs)
    return STRATEGIES[server_opt](opt_args=opt_args, moments=moments, **kwargs)
