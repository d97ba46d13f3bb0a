"""Stage one on one machine, beside its parts (the SSL module: :mod:`fedssl.methods.ssl_recipe`;
views: :mod:`fedssl.methods.views`; the kNN monitor: :mod:`fedssl.methods.monitor`): the
SSL module a config describes with its view maker, the checks of the ``ssl`` section, an
exported backbone's metadata, and the centralized reference
(SSL on the union of the clients' unlabeled images). Nothing here imports Flower.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from fedssl import runtime
from fedssl.config import ExperimentConfig, round_lr
from fedssl.methods.monitor import MonitorSettings, backbone_knn, bn_image_count
from fedssl.methods.ssl import method_class
from fedssl.methods.ssl.base import SSLMethod
from fedssl.methods.ssl_recipe import local_layer_keys, method_settings, model_in_chans
from fedssl.methods.views import batch_views, view_settings, views_dataset, views_loader

__all__ = [
    "build_ssl",
    "CENTRAL",
    "check_ssl",
    "backbone_meta",
    "pretrain_centralized",
]


#: the "client id" of a centralized run in :func:`fedssl.runtime.round_seed`
CENTRAL = -1


def build_ssl(cfg: ExperimentConfig, lr: float | None = None) -> SSLMethod:
    """The configured SSL module (``ssl.method`` on ``model.backbone``, lightly heads/losses).
    Silent about settings that do not apply (:func:`check_ssl` warns, once per run)."""
    m, t = cfg.model, cfg.train
    module = method_class(cfg.ssl.method)(
        m.backbone,
        in_chans=model_in_chans(cfg),
        small_input=m.small_input,
        optimizer=t.optimizer,
        lr=t.lr if lr is None else lr,
        weight_decay=t.weight_decay,
        **method_settings(cfg, warn=False),
    )
    module.view_maker = batch_views(cfg)
    return module


def check_ssl(cfg: ExperimentConfig) -> None:
    """Every check of the ``ssl`` section that needs no data: the method's settings and
    travelling parts, and each client's views (what a launcher runs before anything starts).

    Raises:
        ValueError: from :func:`method_settings` or :func:`view_settings`; a negative
            ``ssl.knn_bn_images``; ``ssl.views: batched`` for a method whose views cannot be
            batched; ``ssl.local_layers`` that name no layer of the backbone or all of it.
    """
    method_settings(cfg)
    for pid in [None, *range(len(cfg.data.clients))]:
        view_settings(cfg, pid)
    bn_image_count(cfg)
    batch_views(cfg)
    if cfg.ssl.local_layers:
        local_layer_keys(cfg, build_ssl(cfg))


def backbone_meta(cfg: ExperimentConfig, rnd: int) -> dict:
    """Metadata stored with an exported backbone: enough to rebuild it from the file alone."""
    m = cfg.model
    meta = {
        "backbone": m.backbone,
        "in_chans": model_in_chans(cfg),
        "small_input": m.small_input,
        "image_size": m.image_size,
        "round": rnd,
        "run": cfg.name,
    }
    if cfg.ssl.local_layers:  # the layers each client kept: not in the merged backbone's file
        meta["local_layers"] = ",".join(cfg.ssl.local_layers)
        meta["local_clients"] = ",".join(cfg.data.clients)
    return meta


def pretrain_centralized(
    cfg: ExperimentConfig, epochs: int, export: str | Path | None = None
) -> dict:
    """The centralized reference: one model of the configured SSL method on the union of every
    client's unlabeled images, ``epochs`` epochs with the federated run's per-round learning
    rate schedule (one epoch here = one round there: the same images, batch size and optimizer),
    then each client's kNN accuracy with its own labeled bank and test queries, exactly as the
    federated monitor.

    ``export``: also write the backbone there (safetensors, as a federated run's
    ``backbone.safetensors``), e.g. for stage two's centralized-SSL reference.

    Returns ``{"knn_acc_c<i>": ..., "knn_acc_mean": ..., "train_s": ..., "images": ...}``.
    """
    from torch.utils.data import ConcatDataset

    torch.set_num_threads(max(1, cfg.train.threads))
    torch.manual_seed(cfg.seed)
    module = build_ssl(cfg)
    ds = ConcatDataset([views_dataset(cfg, pid) for pid in range(len(cfg.data.clients))])
    rt = runtime.resolve(cfg)
    t0, images = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        module.lr = round_lr(cfg, epoch)  # a fresh optimizer each epoch, as each round has
        seed = runtime.round_seed(cfg.seed, epoch, CENTRAL)
        runtime.seed_everything(seed)
        trainer = runtime.trainer(rt, max_epochs=1)
        with runtime.layout(module, rt):
            trainer.fit(module, views_loader(ds, cfg.train.batch_size, seed, rt))
        images += int(trainer.global_step) * cfg.train.batch_size
    out: dict = {"train_s": time.perf_counter() - t0, "images": images}
    if export is not None:
        from fedssl.models.backbones import export_backbone

        export_backbone(module.state_dict(), export, backbone_meta(cfg, epochs))
    monitor = MonitorSettings.of(cfg)
    accs = [backbone_knn(monitor, pid, module) for pid in range(len(cfg.data.clients))]
    out.update({f"knn_acc_c{i}": a for i, a in enumerate(accs)})
    out["knn_acc_mean"] = sum(accs) / len(accs)
    return out
