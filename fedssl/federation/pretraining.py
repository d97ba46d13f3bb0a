"""Stage one as a federated task: local SimCLR on a client's unlabeled images, kNN monitoring.

What a client does in a round (:func:`local_train`), how it scores the merged backbone
(:func:`local_evaluate`: weighted kNN with its labeled part as the bank and its test split as
queries), and the initial weights every client starts from (:func:`initial_state`). Only the keys
under ``SHARED_KEYS["pretrain"]`` (:mod:`fedssl.federation.records`: backbone + projection head)
travel.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from fedssl import runtime
from fedssl.config import ExperimentConfig, round_lr
from fedssl.data.tasks import ImageDataset, client_task, subsample, task_in_chans
from fedssl.evaluation import extract_features, knn_accuracy
from fedssl.federation.records import SHARED_KEYS, travelling_keys
from fedssl.models.simclr import SimCLR, eval_transform, simclr_transform

__all__ = [
    "build_simclr",
    "initial_state",
    "model_in_chans",
    "local_train",
    "local_evaluate",
    "backbone_knn",
    "views_transform",
    "views_loader",
    "pretrain_centralized",
    "backbone_meta",
]


def model_in_chans(cfg: ExperimentConfig) -> int:
    """The backbone's input channels: ``model.in_chans``, or (0) the most any client's data has."""
    return cfg.model.in_chans or task_in_chans(cfg.data)


def build_simclr(cfg: ExperimentConfig, lr: float | None = None) -> SimCLR:
    """The configured SimCLR module (backbone from timm, lightly head and loss)."""
    m, t = cfg.model, cfg.train
    return SimCLR(
        m.backbone,
        in_chans=model_in_chans(cfg),
        small_input=m.small_input,
        proj_hidden=m.proj_hidden,
        proj_out=m.proj_out,
        temperature=cfg.ssl.temperature,
        optimizer=t.optimizer,
        lr=t.lr if lr is None else lr,
        weight_decay=t.weight_decay,
    )


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


def image_mode(cfg: ExperimentConfig) -> str:
    return "RGB" if (model_in_chans(cfg)) == 3 else "L"


def views_transform(cfg: ExperimentConfig):
    """lightly's SimCLR views for the configured image size, channels and augmentation."""
    return simclr_transform(
        cfg.model.image_size,
        model_in_chans(cfg),
        min_scale=cfg.ssl.min_scale,
        cj_prob=cfg.ssl.cj_prob,
        cj_strength=cfg.ssl.cj_strength,
        hf_prob=cfg.ssl.hf_prob,
        rr_prob=cfg.ssl.rr_prob,
        rr_degrees=cfg.ssl.rr_degrees,
    )


def views_loader(
    cfg: ExperimentConfig, ds, seed: int, rt: runtime.Runtime | None = None
) -> DataLoader:
    """Shuffled batches of view pairs (last partial batch dropped: NT-Xent wants full batches),
    loaded with the runtime's workers and pinned memory."""
    rt = rt or runtime.resolve(cfg)
    return runtime.loader(rt, ds, cfg.train.batch_size, shuffle=True, drop_last=True, seed=seed)


def local_train(
    cfg: ExperimentConfig, partition_id: int, state: dict[str, torch.Tensor], server_round: int
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """SimCLR on this client's unlabeled images, from the received shared weights.

    Metrics: ``num-examples`` (unlabeled images: the FedAvg weight), ``partition-id``,
    ``train_loss`` (mean NT-Xent of the round), ``train_s``, ``images_per_s``, ``steps``.
    """
    torch.set_num_threads(max(1, cfg.train.threads))
    task = client_task(cfg.data, partition_id)
    module = build_simclr(cfg, lr=round_lr(cfg, server_round))
    load_shared(module, state, cfg)
    t = cfg.train
    ds = ImageDataset(task.train, task.unlabeled, views_transform(cfg), mode=image_mode(cfg))
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


def backbone_knn(cfg: ExperimentConfig, partition_id: int, module: SimCLR) -> float:
    """kNN accuracy of ``module``'s backbone on this client: labeled part = bank, test = queries."""
    task = client_task(cfg.data, partition_id)
    s = cfg.ssl
    tf = eval_transform(cfg.model.image_size, module.backbone_in_chans)
    seed = cfg.data.seed * 1000 + partition_id
    bank_idx = task.labeled[subsample(task.train.labels[task.labeled], s.knn_bank, seed)]
    query_idx = subsample(task.test.labels, s.knn_queries, seed)
    mode = image_mode(cfg)
    bs = cfg.train.eval_batch_size
    rt = runtime.resolve(cfg)

    def feats(data, idx: np.ndarray):
        ds = ImageDataset(data, idx, tf, mode)
        return extract_features(module.backbone, runtime.loader(rt, ds, bs), rt)

    bank, bank_y = feats(task.train, bank_idx)
    queries, query_y = feats(task.test, query_idx)
    return knn_accuracy(bank, bank_y, queries, query_y, task.num_classes, s.knn_k, s.knn_t)


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


def backbone_meta(cfg: ExperimentConfig, rnd: int) -> dict:
    """Metadata stored with an exported backbone: enough to rebuild it from the file alone."""
    m = cfg.model
    return {
        "backbone": m.backbone,
        "in_chans": model_in_chans(cfg),
        "small_input": m.small_input,
        "image_size": m.image_size,
        "round": rnd,
        "run": cfg.name,
    }


def pretrain_centralized(
    cfg: ExperimentConfig, epochs: int, export: str | Path | None = None
) -> dict:
    """The centralized reference: one SimCLR model on the union of every client's unlabeled
    images, ``epochs`` epochs with the federated run's per-round learning rate schedule (one
    epoch here = one round there: the same images, batch size and optimizer), then each client's
    kNN accuracy with its own labeled bank and test queries, exactly as the federated monitor.

    ``export``: also write the backbone there (safetensors, as a federated run's
    ``backbone.safetensors``), e.g. for stage two's centralized-SSL reference.

    Returns ``{"knn_acc_c<i>": ..., "knn_acc_mean": ..., "train_s": ..., "images": ...}``.
    """
    from torch.utils.data import ConcatDataset

    torch.set_num_threads(max(1, cfg.train.threads))
    torch.manual_seed(cfg.seed)
    module = build_simclr(cfg)
    tf = views_transform(cfg)
    parts = []
    for pid in range(len(cfg.data.clients)):
        task = client_task(cfg.data, pid)
        parts.append(ImageDataset(task.train, task.unlabeled, tf, mode=image_mode(cfg)))
    ds = ConcatDataset(parts)
    rt = runtime.resolve(cfg)
    t0, images = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        module.lr = round_lr(cfg, epoch)  # a fresh optimizer each epoch, as each round has
        runtime.seed_everything(cfg.seed * 7919 + epoch)
        trainer = runtime.trainer(rt, max_epochs=1)
        with runtime.layout(module, rt):
            trainer.fit(module, views_loader(cfg, ds, cfg.seed * 7919 + epoch, rt))
        images += int(trainer.global_step) * cfg.train.batch_size
    out: dict = {"train_s": time.perf_counter() - t0, "images": images}
    if export is not None:
        from fedssl.models.simclr import export_backbone

        export_backbone(module.state_dict(), export, backbone_meta(cfg, epochs))
    accs = [backbone_knn(cfg, pid, module) for pid in range(len(cfg.data.clients))]
    out.update({f"knn_acc_c{i}": a for i, a in enumerate(accs)})
    out["knn_acc_mean"] = sum(accs) / len(accs)
    return out
