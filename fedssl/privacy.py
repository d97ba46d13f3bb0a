"""Differential privacy's arithmetic: the RDP accountant, noise for a target ε, and which
settings can be private together.

Two guarantees, each accounted from what a run actually did (plain numbers, so a resumed run
ends with the ε an uninterrupted one would have):

- **record-level** (``privacy.dp_sgd``): DP-SGD on a client (Abadi et al. 2016), Opacus's
  per-sample clipping and noise; Poisson sampling of each batch at rate ``batch / examples``;
  the history is ``[(noise_multiplier, sample_rate, steps), ...]`` per client.
- **client-level** (``privacy.central``): DP-FedAvg (McMahan et al. 2018): every client's update
  clipped to ``clipping_norm``, Gaussian noise of std ``σ·C / n`` on their mean. The server
  samples a fixed number of clients, not a Poisson sample, so no amplification by sampling is
  claimed: every round counts at sampling rate 1.

The accountant is Opacus's RDP analysis (Mironov 2017; Mironov, Talwar, Zhang 2019) with the
conversion to (ε, δ) of Balle et al. 2020.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = [
    "ORDERS",
    "PrivacyError",
    "epsilon",
    "noise_for_epsilon",
    "check_privacy",
    "describe",
    "Ledger",
    "sampled_clients",
    "count_stddev",
    "SECAGG_MODULUS",
    "secagg_shares",
    "reproducible_noise",
    "REPRODUCIBLE_WARNING",
]

#: RDP orders the accountant minimises over: Opacus's defaults, extended to 512 for small ε.
ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10.0 for x in range(1, 100)) + tuple(range(12, 64)) + (80, 128, 256, 512)
)


class PrivacyError(ValueError):
    """Settings that cannot be private together, or a budget that cannot be met."""


def epsilon(history: Iterable[Sequence[float]], delta: float) -> float:
    """ε at ``delta`` after the Gaussian mechanisms of ``history``: each entry is
    ``(noise_multiplier, sample_rate, steps)``. No step (or only σ = ∞) spends nothing: 0;
    a step without noise spends everything: ``inf``.

    Raises:
        PrivacyError: ``delta`` outside (0, 1) or a sample rate outside (0, 1].
    """
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta}")
    grouped: dict[tuple[float, float], int] = {}  # one RDP curve per (σ, q): steps add up
    for sigma, q, steps in history:
        if steps > 0:
            grouped[(float(sigma), float(q))] = grouped.get((float(sigma), float(q)), 0) + steps
    total = [0.0] * len(ORDERS)
    any_step = False
    for (sigma, q), steps in grouped.items():
        if not 0 < q <= 1:
            raise PrivacyError(f"sample rate must be in (0, 1], got {q}")
        if sigma <= 0:
            return math.inf
        rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=int(steps), orders=list(ORDERS))
        total = [t + float(r) for t, r in zip(total, rdp, strict=True)]
        any_step = True
    if not any_step:
        return 0.0
    eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=total, delta=delta)
    return float(eps)


@lru_cache(maxsize=256)
def noise_for_epsilon(target: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier whose ``steps`` steps at ``sample_rate`` spend at most
    ``target`` ε at ``delta`` (bisection on :func:`epsilon`, to 0.1 % of σ).

    Raises:
        PrivacyError: a non-positive target or step count.
    """
    if target <= 0:
        raise PrivacyError(f"epsilon must be > 0, got {target}")
    if steps < 1:
        raise PrivacyError(f"a private fit needs at least one step, got {steps}")
    lo, hi = 0.0, 1.0
    while epsilon([(hi, sample_rate, steps)], delta) > target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise PrivacyError(f"no noise multiplier reaches epsilon {target} at delta {delta}")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if epsilon([(mid, sample_rate, steps)], delta) > target:
            lo = mid
        else:
            hi = mid
    return hi


#: merges whose result is a mean of the clients' updates: the only ones whose sensitivity to
#: one client is the clipping norm over the client count
MEAN_MERGES = ("avg",)


def check_privacy(cfg) -> None:
    """Refuse privacy settings that cannot hold together with the rest of the config (an
    :class:`~fedssl.config.ExperimentConfig`): checked while loading, before anything starts.

    Raises:
        PrivacyError: naming the settings and the way out.
    """
    p = cfg.privacy
    dp, central = p.dp_sgd, p.central
    if dp.epsilon is not None and dp.noise_multiplier is not None:
        raise PrivacyError(
            "privacy.dp_sgd: give epsilon (the noise is derived from it) or noise_multiplier "
            "(epsilon is then accounted), not both"
        )
    if dp.enabled:
        if cfg.experiment == "pretrain":
            raise PrivacyError(
                "privacy.dp_sgd is not supported for stage one (experiment: pretrain): an "
                "in-batch contrastive loss mixes the examples of a batch, so per-sample "
                "gradients do not exist to clip. Use privacy.central (client-level DP) for "
                "stage one, and privacy.dp_sgd for the supervised runs and stage-two heads"
            )
        if cfg.experiment == "supervised" and cfg.model.batchnorm:
            raise PrivacyError(
                "privacy.dp_sgd needs a model without BatchNorm (its statistics mix the "
                "examples of a batch): set model.batchnorm=false"
            )
        if cfg.experiment == "finetune" and cfg.finetune.mode != "linear":
            raise PrivacyError(
                f"privacy.dp_sgd trains linear heads, not finetune.mode={cfg.finetune.mode!r}: "
                "the backbone's BatchNorm mixes the examples of a batch; set finetune.mode=linear"
            )
        if cfg.experiment == "finetune" and cfg.finetune.bn == "client":
            raise PrivacyError(
                "privacy.dp_sgd with finetune.bn=client would release the backbone's statistics "
                "of this client's images without noise: set finetune.bn=merged"
            )
    if p.secagg.enabled:
        _check_secagg(cfg)
    if central.enabled and central.adaptive:
        _check_adaptive(cfg)
    if central.enabled:
        f = cfg.federation
        if f.method not in MEAN_MERGES:
            raise PrivacyError(
                f"privacy.central needs federation.method=avg, not {f.method!r}: the noise is "
                "calibrated to a mean of clipped updates, and "
                f"{f.method} can follow one client's update wherever it goes"
            )
        if f.weighted:
            raise PrivacyError(
                "privacy.central needs federation.weighted=false: each client's clipped update "
                "counts 1/n, whatever its example count (weighting would raise a large client's "
                "influence above the clipping norm and reveal its size)"
            )


class Ledger:
    """The privacy a federated run spent, round by round: client-level releases (the noised
    mean of a round) and each client's DP-SGD steps. Kept in the run's ``state.json`` beside
    the checkpoint, so a resumed run continues from the rounds it kept.

    ``entries``: ``{"central": {round: [σ, q, steps]}, "dp_sgd": {client: {round: [σ, q,
    steps]}}}`` with string keys (what :meth:`to_state` writes).
    """

    def __init__(self, entries: dict | None = None):
        e = entries or {}
        self.central: dict[str, list[float]] = dict(e.get("central") or {})
        self.dp_sgd: dict[str, dict[str, list[float]]] = {
            str(c): dict(r) for c, r in (e.get("dp_sgd") or {}).items()
        }
        #: adaptive clipping: the clipping norm after each round
        self.clipping: dict[str, float] = dict(e.get("clipping") or {})

    def add_central(self, rnd: int, noise_multiplier: float, next_clip: float | None = None):
        """Round ``rnd`` released one noised mean of clipped client updates (``next_clip``:
        adaptive clipping's norm for the next round)."""
        self.central[str(rnd)] = [float(noise_multiplier), 1.0, 1]
        if next_clip is not None:
            self.clipping[str(rnd)] = float(next_clip)

    def clipping_norm(self) -> float | None:
        """Adaptive clipping's norm for the round after the last one kept (None: none kept)."""
        return self.clipping[max(self.clipping, key=int)] if self.clipping else None

    def add_client(self, rnd: int, client: int, noise: float, rate: float, steps: int) -> None:
        """Client ``client`` took ``steps`` DP-SGD steps in round ``rnd``."""
        self.dp_sgd.setdefault(str(client), {})[str(rnd)] = [float(noise), float(rate), int(steps)]

    def keep_until(self, last_round: int) -> None:
        """Forget rounds after ``last_round`` (a resumed run starts after it)."""
        self.central = {r: v for r, v in self.central.items() if int(r) <= last_round}
        self.clipping = {r: v for r, v in self.clipping.items() if int(r) <= last_round}
        for c in self.dp_sgd:
            self.dp_sgd[c] = {r: v for r, v in self.dp_sgd[c].items() if int(r) <= last_round}

    def to_state(self) -> dict:
        """The entries, for ``state.json``."""
        return {"central": self.central, "dp_sgd": self.dp_sgd, "clipping": self.clipping}

    def report(self, central_delta: float, dp_sgd_delta: float, clipping_norm: float) -> dict:
        """ε spent so far: ``central`` (client-level, over the rounds released) and ``dp_sgd``
        (record-level, per client); a part that never ran is left out."""
        out: dict = {}
        if self.central:
            sigmas = sorted({v[0] for v in self.central.values()})
            out["central"] = {
                "epsilon": epsilon(self.central.values(), central_delta),
                "delta": central_delta,
                "noise_multiplier": sigmas[0] if len(sigmas) == 1 else sigmas,
                "clipping_norm": self.clipping_norm() or clipping_norm,
                "rounds": len(self.central),
                "sample_rate": 1.0,
            }
        if self.dp_sgd:
            out["dp_sgd"] = {
                c: {
                    "epsilon": epsilon(rounds.values(), dp_sgd_delta),
                    "delta": dp_sgd_delta,
                    "noise_multiplier": max(v[0] for v in rounds.values()),
                    "sample_rate": max(v[1] for v in rounds.values()),
                    "steps": int(sum(v[2] for v in rounds.values())),
                    "rounds": len(rounds),
                }
                for c, rounds in sorted(self.dp_sgd.items(), key=lambda kv: _by_client(kv))
            }
        return out


#: Flower's SecAgg+ modulus: the masked sum of a round lives in [0, 2^32); the quantised
#: updates of the round's n clients must sum below it (n * quantization_range < 2^32)
SECAGG_MODULUS = 2**32


def sampled_clients(cfg) -> int:
    """Clients a round asks (Flower's FedAvg sampling: the fraction of the federation, at
    least ``min_clients``, at most all)."""
    n = len(cfg.data.clients) or cfg.data.num_clients
    f = cfg.federation
    return min(n, max(int(n * f.fraction_train), f.min_clients))


def _check_secagg(cfg) -> None:
    s, f = cfg.privacy.secagg, cfg.federation
    if f.method not in MEAN_MERGES:
        raise PrivacyError(
            f"privacy.secagg needs federation.method=avg, not {f.method!r}: the server sees "
            f"only the mean of the updates, and {f.method} needs each one"
        )
    if f.weighted:
        raise PrivacyError(
            "privacy.secagg averages every client equally: set federation.weighted=false "
            "(a weight in the masked vector would reveal the client's example count)"
        )
    n = sampled_clients(cfg)
    if n < 3:
        raise PrivacyError(
            f"privacy.secagg needs at least 3 clients per round, this federation asks {n}: "
            "with two, each client can subtract its own update from the mean and read the other"
        )
    if s.num_shares and s.num_shares > n:
        raise PrivacyError(
            f"privacy.secagg.num_shares={s.num_shares} is more than the {n} clients of a round"
        )
    if s.num_shares and s.num_shares < n and s.num_shares % 2 == 0:
        raise PrivacyError(
            f"privacy.secagg.num_shares={s.num_shares} must be odd (or {n}, every client of a "
            f"round): each client masks with num_shares - 1 neighbours, half on each side; "
            f"use {s.num_shares - 1} or {s.num_shares + 1}"
        )
    shares, threshold = secagg_shares(s, n)
    if threshold >= shares:
        raise PrivacyError(
            f"privacy.secagg.reconstruction_threshold={threshold} must be below num_shares="
            f"{shares} (the shares each client's key is split into)"
        )
    if 2 * threshold <= shares:
        raise PrivacyError(
            f"privacy.secagg.reconstruction_threshold={threshold} must be more than half of "
            f"num_shares={shares}: at half or less, the server could rebuild both a client's "
            "private mask and its pairwise keys and unmask its update"
        )
    q = s.quantization_range
    if n * q >= SECAGG_MODULUS:
        raise PrivacyError(
            f"privacy.secagg.quantization_range={q} is too large for {n} clients a round: "
            f"their quantised sum reaches {n} * {q} >= 2^32, SecAgg+'s modulus, and wraps "
            f"around to a wrong mean; use at most {(SECAGG_MODULUS - 1) // n}"
        )
    if cfg.privacy.central.enabled and cfg.privacy.central.clipping != "client":
        raise PrivacyError(
            "privacy.central with privacy.secagg needs privacy.central.clipping=client: the "
            "server never sees an update to clip"
        )


def secagg_shares(secagg, clients: int) -> tuple[int, int]:
    """SecAgg+'s shares per client key and the threshold that rebuilds one, for ``clients``
    per round from a ``privacy.secagg`` section. Unset, each client masks with a neighbourhood
    of ``ceil(log2 n) + 1`` shares raised to the next odd number (at least 3, at most n), the
    O(log n) of SecAgg+ (Bell et al. 2020): 3 for 4 clients, 5 for 6 to 16, 7 for 17 to 64, 9
    for 100. Odd, because a neighbourhood is the client and the same number on each side:
    Flower raises an even count by one after it has told the clients, who then hold one share
    too few. ``num_shares = n`` is the all-pairs SecAgg of Bonawitz et al. 2017. The threshold
    is a majority of the shares unless set (more than half keeps the server from rebuilding
    both masks of one client)."""
    shares = secagg.num_shares
    if not shares:
        shares = min(clients, max(3, math.ceil(math.log2(clients)) + 1))
        if shares < clients and shares % 2 == 0:
            shares = min(clients, shares + 1)
    return shares, secagg.reconstruction_threshold or shares // 2 + 1


def count_stddev(central, clients: int) -> float:
    """The std of the noise on adaptive clipping's count of unclipped updates."""
    return central.clipped_count_stddev or clients / 20


def _check_adaptive(cfg) -> None:
    c = cfg.privacy.central
    n = sampled_clients(cfg)
    if c.noise_multiplier and c.noise_multiplier >= 2 * count_stddev(c, n):
        raise PrivacyError(
            f"privacy.central.adaptive: noise_multiplier {c.noise_multiplier:g} must be below "
            f"2 * clipped_count_stddev = {2 * count_stddev(c, n):g} (the count's noise takes "
            f"part of the budget; its default is clients / 20 = {n / 20:g}): raise "
            "privacy.central.clipped_count_stddev or lower the noise"
        )
    if cfg.privacy.secagg.enabled:
        raise PrivacyError(
            "privacy.central.adaptive with privacy.secagg: each client's clipped-or-not bit "
            "would travel outside the secure sum; use a fixed clipping_norm with secagg"
        )


#: what a run whose noise came from a known seed says beside its ε
REPRODUCIBLE_WARNING = (
    "the noise of {} came from a noise_seed: anyone who knows it regenerates the noise and "
    "subtracts it, so this ε does not hold against them (tests only)"
)


def reproducible_noise(cfg) -> list[str]:
    """The enabled private settings of ``cfg`` whose noise a ``noise_seed`` makes
    reproducible (``privacy.central``, ``privacy.dp_sgd``): their guarantee does not hold
    against anyone who knows the seed."""
    p = cfg.privacy
    return [
        f"privacy.{name}"
        for name, section in (("central", p.central), ("dp_sgd", p.dp_sgd))
        if section.enabled and section.noise_seed is not None
    ]


def describe(report: dict) -> str:
    """One line for a run's privacy report (``{"central": {...}, "dp_sgd": {...}}``), with
    :data:`REPRODUCIBLE_WARNING` when the report names ``reproducible_noise``."""
    parts = []
    c = report.get("central")
    if c:
        parts.append(
            f"client-level ε={c['epsilon']:.3g} at δ={c['delta']:g} "
            f"(σ={c['noise_multiplier']}, C={c['clipping_norm']:g}, {c['rounds']} rounds, "
            "no sampling amplification)"
        )
    d = report.get("dp_sgd")
    if d:
        per = ", ".join(f"c{k} {v['epsilon']:.3g}" for k, v in sorted(d.items(), key=_by_client))
        parts.append(f"record-level ε at δ={next(iter(d.values()))['delta']:g}: {per}")
    if parts and report.get("reproducible_noise"):
        parts.append("WARNING: " + REPRODUCIBLE_WARNING.format(
            " and ".join(report["reproducible_noise"])))  # fmt: skip
    return "[fedssl] privacy: " + "; ".join(parts) if parts else ""


def _by_client(item) -> int:
    k = str(item[0])
    return int(k) if k.isdigit() else 0
