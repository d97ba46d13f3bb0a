"""Stage one as a federated task: local SimCLR on a client's unlabeled images, kNN monitoring.

What a client does in a round (:func:`local_train`), how it scores the merged backbone
(:func:`local_evaluate`: weighted kNN with its labeled part as the bank and its test split as
queries), and the initial weights every client starts from (:func:`initial_state`). Only the keys
under ``SHARED_KEYS["pretrain"]`` (:mod:`fedssl.federation.records`: backbone + projection head)
travel.
"""

from __future__ import annotations

import time

import torch

from fedssl import runtime
from fedssl.config import ExperimentConfig, round_lr
from fedssl.data.client_images import client_task
from fedssl.federation.records import SHARED_KEYS, travelling_keys
from fedssl.methods.pretrain import backbone_knn, build_simclr, views_dataset, views_loader
from fedssl.methods.ssl.simclr import SimCLR

__all__ = ["initial_state", "shared_state", "load_shared", "local_train", "local_evaluate"]


def shared_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The travelling part of a module's state dict (backbone + projection head), detached."""
    sd = module.state_dict()
    return {k: sd[k].detach() for k in travelling_keys(sd, include=SHARED_KEYS["pretrain"])}


def load_shared(module: SimCLR, state: dict[str, torch.Tensor], cfg: ExperimentConfig) -> None:
    """Load received shared weights into ``module``; every travelling key must fit.

    Raises:
        ValueError: the weights belong to another architecture (names or shapes differ).
    """
    what = f"received weights do not fit the configured backbone {cfg.model.backbone!r}"
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{what}: {err}") from err
    wanted = set(shared_state(module))
    if unexpected or wanted & set(missing):
        raise ValueError(
            f"{what}: missing {sorted(wanted & set(missing))[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )


def initial_state(cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """Initial shared weights, identical for every client (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return shared_state(build_simclr(cfg))


def local_train(
    cfg: ExperimentConfig, partition_id: int, state: dict[str, torch.Tensor], server_round: int
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """SimCLR on this client's unlabeled images, from the received shared weights.

    Metrics: ``num-examples`` (unlabeled images: the FedAvg weight), ``partition-id``,
    ``train_loss`` (mean NT-Xent of the round), ``train_s``, ``images_per_s``, ``steps``.
    """
    torch.set_num_threads(max(1, cfg.train.threads))
    module = build_simclr(cfg, lr=round_lr(cfg, server_round))
    load_shared(module, state, cfg)
    t = cfg.train
    ds = views_dataset(cfg, partition_id)
    if len(ds) < t.batch_size:
        raise ValueError(
            f"client {partition_id} has {len(ds)} unlabeled images, fewer than one batch "
            f"({t.batch_size}); lower train.batch_size"
        )
    seed = runtime.round_seed(cfg.seed, server_round, partition_id)
    runtime.seed_everything(seed)
    rt = runtime.resolve(cfg)
    loader = views_loader(cfg, ds, seed, rt)
    trainer = runtime.trainer(rt, **cfg.train.fit_limits())
    t0 = time.perf_counter()
    with runtime.layout(module, rt):
        trainer.fit(module, loader)
    train_s = time.perf_counter() - t0
    steps = int(trainer.global_step)
    loss = trainer.callback_metrics.get("train_loss")
    metrics = {
        "num-examples": len(ds),
        "partition-id": int(partition_id),
        "train_loss": float(loss) if loss is not None else float("nan"),
        "train_s": train_s,
        "steps": steps,
        "images_per_s": steps * t.batch_size / train_s if train_s > 0 else 0.0,
    }
    return shared_state(module), metrics


def local_evaluate(
    cfg: ExperimentConfig, partition_id: int, state: dict[str, torch.Tensor]
) -> dict[str, float]:
    """kNN accuracy of the received (merged) backbone on this client's data."""
    torch.set_num_threads(max(1, cfg.train.threads))
    module = build_simclr(cfg)
    load_shared(module, state, cfg)
    t0 = time.perf_counter()
    acc = backbone_knn(cfg, partition_id, module)
    task = client_task(cfg.data, partition_id)
    return {
        "knn_acc": acc,
        "partition-id": int(partition_id),
        "num-examples": int(min(len(task.test), cfg.ssl.knn_queries or len(task.test))),
        "eval_s": time.perf_counter() - t0,
    }
