"""Stage two federated (``launch/finetune.py --federated``): each client's task head stays on the
client (in its Flower ``Context.state`` and its own head file); only the trainable backbone part
travels and is merged. The round's training and scoring are :mod:`fedssl.methods.finetune`'s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedssl import runtime
from fedssl.config import ConfigError, ExperimentConfig, round_lr
from fedssl.data.client_images import client_task
from fedssl.methods.finetune import (
    build_classifier,
    calibrate,
    evaluate,
    fit,
    head_meta,
    resolve_backbone,
)
from fedssl.methods.heads import BackboneClassifier, save_head

__all__ = [
    "HEAD_KEY",
    "heads_dir",
    "head_file",
    "shared_state",
    "federated_initial_state",
    "federated_train",
    "federated_evaluate",
]

# --------------------------------------------------------------------------- federated (Flower)
HEAD_KEY = "fedssl.head"  # the head's ArrayRecord in the client's Context.state


def heads_dir(cfg: ExperimentConfig) -> Path:
    """Where each client of a federated fine-tuning run saves its head (on its own machine)."""
    return cfg.run_dir() / "heads"


def head_file(cfg: ExperimentConfig, pid: int) -> Path:
    """``<run>/heads/client<pid>-<dataset>.safetensors``."""
    return heads_dir(cfg) / f"client{pid}-{cfg.data.clients[pid]}.safetensors"


def _federated_module(cfg: ExperimentConfig, num_classes: int):
    if cfg.finetune.mode == "linear":
        raise ConfigError(
            "federated fine-tuning needs finetune.mode partial or full: with a frozen backbone "
            "(linear) nothing is shared, so train each head on its own "
            "(launch/finetune.py --client NAME)"
        )
    path = resolve_backbone(cfg.finetune.backbone, cfg.out_dir)
    module, meta = build_classifier(cfg, num_classes, path)
    module.anneal = False  # the round's learning rate comes from the round schedule
    return module, meta


def shared_state(module: BackboneClassifier) -> dict[str, torch.Tensor]:
    """What a fine-tuning client sends: its trainable backbone part, within
    ``SHARED_KEYS["finetune"]`` (never a ``head.`` key)."""
    from fedssl.federation.records import SHARED_KEYS, travelling_keys

    sd = module.state_dict()
    trainable = {k: sd[k] for k in module.trainable_state_keys()}
    keys = travelling_keys(trainable, include=SHARED_KEYS["finetune"], exclude=("head.",))
    return {k: trainable[k].detach() for k in keys}


def federated_initial_state(cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """The shared starting point: the trainable backbone part of the stage-one backbone."""
    module, _ = _federated_module(cfg, 2)
    return shared_state(module)


def _load_received(module: BackboneClassifier, state: dict[str, torch.Tensor]) -> None:
    expected = set(shared_state(module))
    got = set(state)
    if got != expected:
        raise ValueError(
            "received backbone weights do not match this client's trainable part: "
            f"missing {sorted(expected - got)[:3]}, unexpected {sorted(got - expected)[:3]}"
        )
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"received backbone weights do not fit: {err}") from err


def _restore_head(cfg: ExperimentConfig, pid: int, module: BackboneClassifier, store) -> bool:
    """Load this client's head from its Context state, else from its saved file (resume)."""
    from fedssl.federation.records import from_record

    if store is not None and HEAD_KEY in store.array_records:
        head = from_record(store.array_records[HEAD_KEY])
        module.head.load_state_dict({k[len("head.") :]: v for k, v in head.items()})
        return True
    f = head_file(cfg, pid)
    if f.is_file():
        from safetensors.torch import load_file

        head = {k[len("head.") :]: v for k, v in load_file(str(f)).items() if k.startswith("head.")}
        module.head.load_state_dict(head)
        return True
    return False


def federated_train(
    cfg: ExperimentConfig, pid: int, state: dict[str, torch.Tensor], rnd: int, store=None
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One round of federated fine-tuning on client ``pid``: its head (kept locally) and the
    received trainable backbone part train ``finetune.local_epochs`` on its labeled images; only
    the backbone part is returned. The round's learning rate follows ``train.lr_schedule`` over
    the rounds, starting at ``finetune.lr``."""
    from flwr.app import ArrayRecord

    f = cfg.finetune
    task = client_task(cfg.data, pid)
    module, meta = _federated_module(cfg, task.num_classes)
    _load_received(module, state)
    _restore_head(cfg, pid, module, store)
    module.lr = round_lr(cfg, rnd, base=f.lr)
    rt = runtime.resolve(cfg)
    seed = runtime.round_seed(cfg.seed, rnd, pid)
    runtime.seed_everything(seed)
    with runtime.layout(module, rt):
        metrics = fit(module, cfg, task, meta, f.local_epochs, seed=seed, rt=rt)
    sd = module.state_dict()
    head = {k: sd[k].detach().clone() for k in sd if k.startswith("head.")}
    if store is not None:
        store.array_records[HEAD_KEY] = ArrayRecord(head)
    save_head(module, head_file(cfg, pid), head_meta(cfg, task, meta, round=rnd))
    return shared_state(module), {
        "num-examples": metrics["labeled"],
        "partition-id": int(pid),
        "train_loss": metrics["train_loss"],
        "train_s": metrics["train_s"],
    }


def federated_evaluate(
    cfg: ExperimentConfig, pid: int, state: dict[str, torch.Tensor], store=None
) -> dict[str, float]:
    """Score the merged backbone part with this client's own head (``test_acc``,
    ``unlabeled_acc``)."""
    torch.set_num_threads(max(1, cfg.train.threads))
    task = client_task(cfg.data, pid)
    module, meta = _federated_module(cfg, task.num_classes)
    _load_received(module, state)
    if not _restore_head(cfg, pid, module, store):
        raise ValueError(f"client {pid} has no trained head yet (evaluate after a train round)")
    rt = runtime.resolve(cfg)
    with runtime.layout(module, rt):  # the merged backbone's statistics, not the local one's
        calibrate(module, cfg, task, meta, rt)
        scores = evaluate(module, cfg, task, meta, rt)
    return {
        "test_acc": scores["test_acc"],
        "unlabeled_acc": scores["unlabeled_acc"],
        "partition-id": int(pid),
        "num-examples": scores["test_n"],
    }
