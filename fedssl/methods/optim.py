"""The one optimizer factory every LightningModule of fedssl uses (SSL methods, supervised
classification, stage two's heads); schedules are :func:`fedssl.config.round_lr` (over rounds)
and :func:`fedssl.config.cosine` (within one fit)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["OPTIMIZERS", "check_optimizer", "make_optimizer"]

#: optimizer names accepted everywhere (``train.optimizer``, ``finetune.optimizer``)
OPTIMIZERS = ("sgd", "adam", "adamw")


def check_optimizer(name: str) -> str:
    """``name`` if it is one of :data:`OPTIMIZERS`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose {', '.join(OPTIMIZERS)}")
    return name


def make_optimizer(
    name: str,
    params: Iterable,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """``sgd`` (with ``momentum``), ``adam`` or ``adamw`` (decoupled decay) over ``params``
    (parameters, or parameter groups that may carry their own ``lr``)."""
    check_optimizer(name)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
