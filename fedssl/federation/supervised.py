"""Supervised classification as a federated task: what a client does in a round (train its
LightningModule locally, measure its local accuracy) and how the server evaluates the merged
model. Used by the weight-merge experiments (papers 000/001) and the non-IID MLP runs.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch
from torch.utils.data import TensorDataset

from fedssl import runtime
from fedssl.config import ExperimentConfig, round_lr
from fedssl.data.client_tensors import client_tensors, server_test_tensors
from fedssl.methods.dp_sgd import PrivateFit, batches_per_epoch, plan
from fedssl.methods.supervised import Classifier, accuracy, build_model

__all__ = ["initial_state", "local_train", "server_accuracy", "weights_fingerprint"]

log = logging.getLogger(__name__)


for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)


warnings.filterwarnings("ignore", message=".*LeafSpec.*")


warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def initial_state(cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """Initial weights, identical for every client (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg).state_dict()


def local_train(
    cfg: ExperimentConfig, partition_id: int, state: dict[str, torch.Tensor], server_round: int
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train the global weights on one client's data; return new weights and metrics.

    Metrics: ``num-examples`` (FedAvg weight), ``partition-id``, ``local_acc`` (the trained local
    model on the client's local validation/test share), ``train_loss``, ``train_s`` (the
    Lightning fit) and ``work_s`` (everything this function does: data, model, fit, evaluation);
    with ``privacy.dp_sgd``, the fit's DP-SGD (``dp_noise``, ``dp_rate``, ``dp_steps``) for the
    server's accountant.
    """
    t_start = time.perf_counter()
    torch.set_num_threads(max(1, cfg.train.threads))
    data = client_tensors(cfg.data, partition_id)
    x, y = data["train"]
    net = build_model(cfg)
    net.load_state_dict(state, strict=True)
    received = weights_fingerprint(state)
    allowed = torch.unique(y).tolist() if cfg.train.restrict_labels else None
    lr = round_lr(cfg, server_round)
    private = _private_fit(cfg, net, len(y), server_round, partition_id)
    module = Classifier(
        net,
        optimizer=cfg.train.optimizer,
        lr=lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
        allowed_labels=allowed,
        augment=cfg.train.augment,
        prox_mu=cfg.train.prox_mu,
        private=private,
    )
    rt = runtime.resolve(cfg)
    seed = runtime.round_seed(cfg.seed, server_round, partition_id)
    runtime.seed_everything(seed)  # dropout and augmentation draws
    loader = runtime.loader(
        rt, TensorDataset(x, y), cfg.train.batch_size, shuffle=True, seed=seed, workers=False
    )
    if private is not None:
        loader = private.loader(loader)
    t0 = time.perf_counter()
    trainer = runtime.trainer(rt, **cfg.train.fit_limits())
    try:
        with runtime.layout(net, rt):
            trainer.fit(module, loader)
    finally:
        if private is not None:
            private.close()
    train_s = time.perf_counter() - t0
    vx, vy = data["val"]
    f = cfg.federation
    evaluate_now = server_round % max(1, f.eval_every) == 0 or server_round >= f.rounds
    metrics = {
        "num-examples": int(len(y)),
        "partition-id": int(partition_id),
        "local_acc": (
            accuracy(net, vx, vy, cfg.train.eval_batch_size, rt) if evaluate_now else -1.0
        ),
        "train_loss": float(trainer.callback_metrics.get("train_loss", torch.tensor(float("nan")))),
        "train_s": train_s,
        "steps": int(trainer.global_step),
        "received_fingerprint": received,
    }
    if private is not None:
        metrics.update(private.dp.record(int(trainer.global_step)))
    metrics["work_s"] = time.perf_counter() - t_start
    return {k: v.detach() for k, v in net.state_dict().items()}, metrics


def _private_fit(
    cfg: ExperimentConfig, net: torch.nn.Module, examples: int, rnd: int, pid: int
) -> PrivateFit | None:
    """DP-SGD for client ``pid``'s round ``rnd`` of ``net`` on ``examples``
    (``privacy.dp_sgd``; None when off), its noise sized for every round of the run and drawn
    from the OS's secure source (reproducible only with ``privacy.dp_sgd.noise_seed``)."""
    if not cfg.privacy.dp_sgd.enabled:
        return None
    t = cfg.train
    per_round = t.local_steps or t.local_epochs * batches_per_epoch(examples, t.batch_size)
    dp = plan(cfg.privacy.dp_sgd, examples, t.batch_size, per_round * cfg.federation.rounds)
    seed = cfg.privacy.dp_sgd.noise_seed
    return PrivateFit(dp, net, None if seed is None else runtime.round_seed(seed, rnd, pid))


def weights_fingerprint(state: dict[str, torch.Tensor]) -> float:
    """Sum of absolute values of the floating tensors: a cheap identity check of weights."""
    return float(sum(t.double().abs().sum() for t in state.values() if t.is_floating_point()))


def server_accuracy(cfg: ExperimentConfig, state: dict[str, torch.Tensor]) -> float:
    """Accuracy of the merged weights on the server's test set (all clients' test shares)."""
    net = build_model(cfg)
    net.load_state_dict(state, strict=True)
    x, y = server_test_tensors(cfg.data)
    return accuracy(net, x, y, cfg.train.eval_batch_size, runtime.resolve(cfg))
