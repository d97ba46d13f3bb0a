"""Stage one on one machine: the SSL module a config describes, its views and loader, the kNN
monitor of a backbone on one client's data, and the centralized reference (SSL on the union of
the clients' unlabeled images). The federated adapter (:mod:`fedssl.federation.pretraining`)
and the studies build on these; nothing here imports Flower.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fedssl import runtime
from fedssl.config import ExperimentConfig, round_lr
from fedssl.data.client_images import ImageDataset, client_task, subsample, task_in_chans
from fedssl.data.transforms import eval_transform, normalize, pil_mode
from fedssl.methods.knn import extract_features, knn_accuracy
from fedssl.methods.ssl.simclr import SimCLR, simclr_transform

__all__ = [
    "CENTRAL",
    "model_in_chans",
    "build_simclr",
    "views_transform",
    "views_dataset",
    "views_loader",
    "backbone_knn",
    "pixels_knn",
    "backbone_meta",
    "pretrain_centralized",
]

#: the "client id" of a centralized run in :func:`fedssl.runtime.round_seed`
CENTRAL = -1


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


def views_dataset(cfg: ExperimentConfig, partition_id: int) -> ImageDataset:
    """Client ``partition_id``'s unlabeled images as view pairs (what stage one trains on)."""
    task = client_task(cfg.data, partition_id)
    mode = pil_mode(model_in_chans(cfg))
    return ImageDataset(task.train, task.unlabeled, views_transform(cfg), mode=mode)


def views_loader(
    cfg: ExperimentConfig, ds, seed: int, rt: runtime.Runtime | None = None
) -> DataLoader:
    """Shuffled batches of view pairs (last partial batch dropped: NT-Xent wants full batches),
    loaded with the runtime's workers and pinned memory."""
    rt = rt or runtime.resolve(cfg)
    return runtime.loader(rt, ds, cfg.train.batch_size, shuffle=True, drop_last=True, seed=seed)


def _monitor_sets(cfg: ExperimentConfig, partition_id: int, in_chans: int):
    """The kNN monitor's bank (the client's labeled part) and queries (its test split), each a
    function ``features(fn) -> (features, labels)`` over evaluation-transformed batches."""
    task = client_task(cfg.data, partition_id)
    s = cfg.ssl
    tf = eval_transform(cfg.model.image_size, in_chans)
    seed = cfg.data.seed * 1000 + partition_id
    bank_idx = task.labeled[subsample(task.train.labels[task.labeled], s.knn_bank, seed)]
    query_idx = subsample(task.test.labels, s.knn_queries, seed)
    mode = pil_mode(in_chans)
    rt = runtime.resolve(cfg)

    def loader(data, idx: np.ndarray):
        return runtime.loader(rt, ImageDataset(data, idx, tf, mode), cfg.train.eval_batch_size)

    return task, rt, loader(task.train, bank_idx), loader(task.test, query_idx)


def backbone_knn(cfg: ExperimentConfig, partition_id: int, module: SimCLR) -> float:
    """kNN accuracy of ``module``'s backbone on this client: labeled part = bank, test = queries."""
    s = cfg.ssl
    task, rt, bank_batches, query_batches = _monitor_sets(
        cfg, partition_id, module.backbone_in_chans
    )
    bank, bank_y = extract_features(module.backbone, bank_batches, rt)
    queries, query_y = extract_features(module.backbone, query_batches, rt)
    return knn_accuracy(bank, bank_y, queries, query_y, task.num_classes, s.knn_k, s.knn_t)


def pixels_knn(cfg: ExperimentConfig, partition_id: int) -> float:
    """The baseline a backbone's kNN must beat: the same kNN (bank, queries, k, temperature,
    cosine similarity) on the raw pixels the backbone sees, the better of pixels in [0, 1] and
    normalised pixels (so no scaling choice weakens it)."""
    s, chans = cfg.ssl, model_in_chans(cfg)
    task, _, bank_batches, query_batches = _monitor_sets(cfg, partition_id, chans)
    norm = normalize(chans)
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)

    def pixels(batches):
        x, y = zip(*batches, strict=True)
        x = torch.cat(x)
        return x, x * std + mean, torch.cat(y)  # normalised, [0, 1], labels

    bank_n, bank_01, bank_y = pixels(bank_batches)
    query_n, query_01, query_y = pixels(query_batches)
    accs = [
        knn_accuracy(
            F.normalize(b.flatten(1), dim=1),
            bank_y,
            F.normalize(q.flatten(1), dim=1),
            query_y,
            task.num_classes,
            s.knn_k,
            s.knn_t,
        )
        for b, q in ((bank_n, query_n), (bank_01, query_01))
    ]
    return max(accs)


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
    ds = ConcatDataset([views_dataset(cfg, pid) for pid in range(len(cfg.data.clients))])
    rt = runtime.resolve(cfg)
    t0, images = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        module.lr = round_lr(cfg, epoch)  # a fresh optimizer each epoch, as each round has
        seed = runtime.round_seed(cfg.seed, epoch, CENTRAL)
        runtime.seed_everything(seed)
        trainer = runtime.trainer(rt, max_epochs=1)
        with runtime.layout(module, rt):
            trainer.fit(module, views_loader(cfg, ds, seed, rt))
        images += int(trainer.global_step) * cfg.train.batch_size
    out: dict = {"train_s": time.perf_counter() - t0, "images": images}
    if export is not None:
        from fedssl.models.backbones import export_backbone

        export_backbone(module.state_dict(), export, backbone_meta(cfg, epochs))
    accs = [backbone_knn(cfg, pid, module) for pid in range(len(cfg.data.clients))]
    out.update({f"knn_acc_c{i}": a for i, a in enumerate(accs)})
    out["knn_acc_mean"] = sum(accs) / len(accs)
    return out
