"""Centralized baseline: one model trained on the union of every client's training data, same
network, optimizer and batch size as the federated run, evaluated on the same server test set.
"""

from __future__ import annotations

import time

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from fedssl import runtime
from fedssl.config import ExperimentConfig
from fedssl.data.client_tensors import dataset_and_splits, server_test_tensors, to_tensors
from fedssl.methods.supervised import Classifier, accuracy, build_model

__all__ = ["train_centralized"]


class _EpochEval(pl.Callback):
    """Test accuracy after every epoch, on the device the module trains on."""

    def __init__(self, x, y, batch, rt: runtime.Runtime | None = None):
        self.x, self.y, self.batch, self.rt, self.history = x, y, batch, rt, []
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        # on the fit's device and precision; predict gives training mode back
        acc = accuracy(module.net, self.x, self.y, self.batch, self.rt)
        self.history.append(
            {
                "epoch": trainer.current_epoch + 1,
                "test_acc": acc,
                "elapsed_s": time.perf_counter() - self.t0,
            }
        )
        print(
            f"[fedssl] centralized epoch {trainer.current_epoch + 1}: test_acc={acc:.4f}",
            flush=True,
        )


def train_centralized(cfg: ExperimentConfig, epochs: int, threads: int | None = None) -> list[dict]:
    """Train on all clients' training shares pooled; return per-epoch test accuracy.

    Args:
        cfg: the experiment config (data split, model and optimizer are taken from it).
        epochs: passes over the pooled data.
        threads: torch threads (default: all cores).
    """
    torch.set_num_threads(threads or cfg.train.threads)
    ds, splits = dataset_and_splits(cfg.data)
    x, y = to_tensors(ds, np.sort(np.concatenate([s.train for s in splits])))
    torch.manual_seed(cfg.seed)
    net = build_model(cfg)
    module = Classifier(
        net,
        optimizer=cfg.train.optimizer,
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
        gamma=cfg.train.lr_decay,
        augment=cfg.train.augment,
    )
    tx, ty = server_test_tensors(cfg.data)
    rt = runtime.resolve(cfg)
    cb = _EpochEval(tx, ty, cfg.train.eval_batch_size, rt)
    loader = runtime.loader(
        rt, TensorDataset(x, y), cfg.train.batch_size, shuffle=True, seed=cfg.seed, workers=False
    )
    with runtime.layout(net, rt):
        runtime.trainer(rt, callbacks=[cb], max_epochs=epochs).fit(module, loader)
    return cb.history
