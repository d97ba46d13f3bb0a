"""Record-level differential privacy for a Lightning fit: DP-SGD (Abadi et al. 2016) from
Opacus's parts, sized from ``privacy.dp_sgd``.

:func:`plan` turns the settings, a client's example count and batch size, and the steps its
whole run will take into a :class:`DPSGD` (the noise multiplier from a target ε, or the given
one). :class:`PrivateFit` then attaches to the trainable module: Opacus's
``GradSampleModule`` hooks compute per-sample gradients, ``DPOptimizer`` clips each to
``max_grad_norm`` and adds ``N(0, (σ·max_grad_norm)²)`` to their sum, and ``DPDataLoader``
draws each batch by Poisson sampling at rate ``q = 1 / batches per epoch`` (what the accountant
assumes). The steps actually taken are what :func:`fedssl.privacy.epsilon` accounts.

The noise and the Poisson draws come from :func:`noise_generator`: a generator seeded from the
operating system's secure source (``os.urandom``), never from the run's seed, which the server
knows (it sends it): with a seeded generator, whoever knows the seed replays the fit on dummy
data with and without noise and subtracts the noise exactly. The noise itself is drawn in
Opacus's ``secure_mode`` (sums of Gaussians, robust to floating-point attacks). A
``noise_seed`` makes both reproducible, for tests only; the run then says the guarantee does
not hold against anyone who knows it.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedssl.privacy import PrivacyError, epsilon, noise_for_epsilon

# Opacus's hooks on a module whose input needs no gradient (a head over frozen features)
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients")

__all__ = ["DPSGD", "PrivateFit", "plan", "sample_rate", "batches_per_epoch", "noise_generator"]


def noise_generator(seed: int | None = None) -> torch.Generator:
    """The generator of one private fit's noise and batch draws: seeded with 64 bits from
    ``os.urandom`` (unknown to anyone, not logged or stored) unless ``seed`` is given, which
    makes the fit reproducible by anyone who knows it (tests only)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    return torch.Generator().manual_seed(int(seed) % 2**64)


def batches_per_epoch(examples: int, batch_size: int) -> int:
    """Batches in one epoch of ``examples`` (the last one partial)."""
    if examples < 1 or batch_size < 1:
        raise PrivacyError(f"a private fit needs examples and a batch size, got {examples}, "
                           f"{batch_size}")  # fmt: skip
    return math.ceil(examples / batch_size)


def sample_rate(examples: int, batch_size: int) -> float:
    """Poisson sampling rate of one batch: ``1 / batches per epoch`` (Opacus's rule)."""
    return 1.0 / batches_per_epoch(examples, batch_size)


@dataclass(frozen=True)
class DPSGD:
    """One client's DP-SGD: noise multiplier, clipping norm, sampling rate and δ."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    delta: float

    def epsilon(self, steps: int) -> float:
        """ε at ``delta`` after ``steps`` noisy steps."""
        return epsilon([(self.noise_multiplier, self.sample_rate, steps)], self.delta)

    def record(self, steps: int) -> dict[str, float]:
        """What a client reports of a fit (metrics: plain numbers)."""
        return {
            "dp_noise": float(self.noise_multiplier),
            "dp_rate": float(self.sample_rate),
            "dp_steps": int(steps),
        }


def plan(settings, examples: int, batch_size: int, total_steps: int) -> DPSGD:
    """The DP-SGD of a client with ``examples`` training examples whose whole run takes
    ``total_steps`` steps of ``batch_size`` (``settings``: a ``privacy.dp_sgd`` section). With
    ``epsilon`` set, the smallest noise that keeps the run within it; else the given noise.

    Raises:
        PrivacyError: DP-SGD is not enabled, or the budget cannot be met.
    """
    q = sample_rate(examples, batch_size)
    if settings.epsilon is not None:
        sigma = noise_for_epsilon(settings.epsilon, settings.delta, q, total_steps)
    elif settings.noise_multiplier is not None:
        sigma = float(settings.noise_multiplier)
    else:
        raise PrivacyError("privacy.dp_sgd is off: set epsilon or noise_multiplier")
    return DPSGD(sigma, float(settings.max_grad_norm), q, float(settings.delta))


class PrivateFit:
    """DP-SGD around one fit of ``trainable`` (the module whose parameters train; it must mix
    no examples of a batch: no BatchNorm in training mode).

    Use: ``loader = pf.loader(loader)`` for the fit's data, ``pf.optimizer(opt)`` in the
    LightningModule's ``configure_optimizers``, and :meth:`close` after the fit (it removes
    the hooks, so later forward passes cost nothing extra). ``noise_seed``: None (the default)
    draws the noise and the batches from the OS's secure source; a number makes them
    reproducible (:func:`noise_generator`).

    Raises:
        PrivacyError: ``trainable`` holds a module Opacus cannot compute per-sample gradients of.
    """

    def __init__(self, dp: DPSGD, trainable: nn.Module, noise_seed: int | None = None):
        from opacus import GradSampleModule
        from opacus.validators import ModuleValidator

        errors = [
            e
            for e in ModuleValidator.validate(trainable, strict=False)
            if not _frozen_batchnorm_error(e, trainable)
        ]
        if errors:
            raise PrivacyError(
                f"privacy.dp_sgd cannot train this model: {errors[0]} (Opacus's "
                "ModuleValidator.fix replaces BatchNorm by GroupNorm)"
            )
        for m in trainable.modules():  # per-sample hooks cannot see through in-place activations
            if getattr(m, "inplace", False) is True:
                m.inplace = False
        self.dp = dp
        self.reproducible = noise_seed is not None
        self._generator = noise_generator(noise_seed)
        self._gsm = GradSampleModule(trainable, loss_reduction="mean", strict=False)
        self._expected_batch = 0

    def loader(self, loader: DataLoader) -> DataLoader:
        """``loader``'s data, each batch a Poisson sample at the plan's rate."""
        from opacus.data_loader import DPDataLoader

        dp_loader = DPDataLoader.from_data_loader(loader, generator=self._generator)
        if abs(dp_loader.sample_rate - self.dp.sample_rate) > 1e-12:
            raise PrivacyError(
                f"the loader samples at {dp_loader.sample_rate}, the plan at {self.dp.sample_rate}"
            )
        self._expected_batch = max(1, round(len(loader.dataset) * self.dp.sample_rate))
        return dp_loader

    def optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """``opt`` stepping on clipped, noised per-sample gradients."""
        from opacus.optimizers import DPOptimizer

        if not self._expected_batch:
            raise RuntimeError("PrivateFit.loader must wrap the fit's data before the optimizer")
        return DPOptimizer(
            opt,
            noise_multiplier=self.dp.noise_multiplier,
            max_grad_norm=self.dp.max_grad_norm,
            expected_batch_size=self._expected_batch,
            loss_reduction="mean",
            generator=self._generator,
            secure_mode=True,
        )

    def close(self) -> None:
        """Remove the per-sample gradient hooks."""
        self._gsm._close()


def _frozen_batchnorm_error(error: Exception, trainable: nn.Module) -> bool:
    """A BatchNorm without parameters kept in eval mode mixes no examples: Opacus's validator
    refuses every BatchNorm, so such ones are let through here."""
    from torch.nn.modules.batchnorm import _BatchNorm

    bns = [m for m in trainable.modules() if isinstance(m, _BatchNorm)]
    return (
        "BatchNorm" in str(error)
        and bool(bns)
        and all(not m.training and not any(True for _ in m.parameters()) for m in bns)
    )
