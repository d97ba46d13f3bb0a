"""Stage one as a federated task: the configured SSL method on a client's unlabeled images, kNN
monitoring, and the client-side FedSSL updates.

What a client does in a round (:func:`local_train`), how it scores the merged backbone
(:func:`local_evaluate`: weighted kNN with its labeled part as the bank and its test split as
queries), and the initial weights every client starts from (:func:`initial_state`).

Only the configured travelling parts leave a client (``ssl.travel``, or the method's default:
:meth:`~fedssl.methods.ssl.base.SSLMethod.check_travel`). What stays (momentum networks, queues,
a local predictor) and what the client-side update needs (its last trained online network,
FedEMA's lambda) is the client's state, kept in ``<run>/clients/client<pid>.safetensors`` after
each of its rounds (atomic write), so it survives ``--resume``; it is never sent.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from fedssl import runtime
from fedssl.aggregation import client as fedssl_update
from fedssl.config import ExperimentConfig, round_lr
from fedssl.data.cache import ImageTensors
from fedssl.data.client_images import client_task
from fedssl.federation.records import travelling_keys
from fedssl.methods.monitor import MonitorSettings, backbone_knn
from fedssl.methods.pretrain import build_ssl
from fedssl.methods.ssl import method_class
from fedssl.methods.ssl.base import SSLMethod
from fedssl.methods.ssl_recipe import local_layer_keys
from fedssl.methods.views import training_batches

__all__ = [
    "travel_prefixes",
    "shared_keys",
    "initial_state",
    "shared_state",
    "load_shared",
    "client_state_file",
    "local_train",
    "local_evaluate",
]

EXTRA = "extra."  # prefix of SSLMethod.local_extra() tensors in a client state file


def travel_prefixes(cfg: ExperimentConfig) -> tuple[str, ...]:
    """State-dict prefixes of the parts that travel (checked against the method)."""
    cls = method_class(cfg.ssl.method)
    return cls.prefixes(cls.check_travel(cfg.ssl.travel))


def shared_keys(
    module: SSLMethod, cfg: ExperimentConfig, travel: tuple[str, ...] | None = None
) -> list[str]:
    """The state-dict keys that travel: the travelling parts' (``travel``: their prefixes, if
    already known) less the backbone layers each client keeps (``ssl.local_layers``)."""
    include = travel if travel is not None else travel_prefixes(cfg)
    local = local_layer_keys(cfg, module)
    return [k for k in travelling_keys(module.state_dict(), include=include) if k not in local]


def shared_state(
    module: SSLMethod, cfg: ExperimentConfig, travel: tuple[str, ...] | None = None
) -> dict[str, torch.Tensor]:
    """The travelling part of a module's state dict, detached (``travel``: the prefixes, if
    already known)."""
    sd = module.state_dict()
    return {k: sd[k].detach() for k in shared_keys(module, cfg, travel)}


def load_shared(
    module: SSLMethod,
    state: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    travel: tuple[str, ...] | None = None,
) -> None:
    """Load received shared weights into ``module``; exactly the travelling keys must come
    (``travel``: the prefixes, if already known).

    Raises:
        ValueError: the weights belong to another architecture or method (names or shapes
            differ), or hold a part configured to stay on the client.
    """
    what = (
        f"received weights do not fit the configured {cfg.ssl.method} on "
        f"backbone {cfg.model.backbone!r}"
    )
    wanted = set(shared_keys(module, cfg, travel))
    extra = sorted(set(state) - wanted)
    if extra:
        raise ValueError(f"{what}: unexpected {extra[:3]}")
    try:
        missing, _ = module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{what}: {err}") from err
    if wanted & set(missing):
        raise ValueError(f"{what}: missing {sorted(wanted & set(missing))[:3]}")


def client_state_file(cfg: ExperimentConfig, pid: int) -> Path:
    """``<run>/clients/client<pid>.safetensors``: what client ``pid`` keeps between rounds."""
    return cfg.run_dir() / "clients" / f"client{pid}.safetensors"


def _load_client_state(cfg: ExperimentConfig, pid: int):
    f = client_state_file(cfg, pid)
    if not f.is_file():
        return None, {}
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(f), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    if meta.get("method") != cfg.ssl.method or meta.get("backbone") != cfg.model.backbone:
        raise ValueError(
            f"{f} holds client state of {meta.get('method')} on {meta.get('backbone')!r}, not "
            f"{cfg.ssl.method} on {cfg.model.backbone!r}; use another run name"
        )
    return load_file(str(f)), meta


def _save_client_state(
    cfg: ExperimentConfig,
    pid: int,
    module: SSLMethod,
    rnd: int,
    meta: dict,
    travel: tuple[str, ...],
) -> None:
    from fedssl.runs import write_safetensors

    sd = module.state_dict()
    keep_online = cfg.ssl.client_update != "none"  # the update needs the last local online net
    shared = set(shared_keys(module, cfg, travel))
    tensors = {k: v for k, v in sd.items() if keep_online or k not in shared}
    tensors.update({EXTRA + k: v for k, v in module.local_extra().items()})
    if not tensors and not meta:
        return  # nothing to keep (e.g. simclr without a client-side update)
    info = {"method": cfg.ssl.method, "backbone": cfg.model.backbone, "round": rnd, **meta}
    write_safetensors(client_state_file(cfg, pid), tensors, info)


def _client_update(
    cfg: ExperimentConfig,
    module: SSLMethod,
    received: dict[str, torch.Tensor],
    saved: dict[str, torch.Tensor],
    meta: dict,
) -> dict[str, float]:
    """Apply FedEMA / FedU to the received weights loaded in ``module``; returns the metrics
    (``divergence``, ``mu`` or ``global_predictor``)."""
    s = cfg.ssl
    online = [k for k in received if k.startswith(("backbone.", "projection_head."))]
    if not all(k in saved for k in online):
        return {}  # no local network yet (first participation)
    div = fedssl_update.divergence(saved, received, online)
    if s.client_update == "fedema":
        lam = s.fedema_lambda or float(meta.get("fedema_lambda", 0.0))
        if not lam > 0:
            return {"divergence": div}
        mu = fedssl_update.fedema_mu(lam, div)
        module.load_state_dict(fedssl_update.ema_merge(saved, received, mu), strict=False)
        return {"divergence": div, "mu": mu}
    predictor = [k for k in received if k.startswith("prediction_head.")]
    take_global = fedssl_update.fedu_predictor_is_global(div, s.fedu_threshold)
    if not take_global:
        module.load_state_dict({k: saved[k] for k in predictor}, strict=False)
    return {"divergence": div, "global_predictor": float(take_global)}


def initial_state(cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """Initial shared weights, identical for every client (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return shared_state(build_ssl(cfg), cfg)


def local_train(
    cfg: ExperimentConfig, partition_id: int, state: dict[str, torch.Tensor], server_round: int
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The configured SSL method on this client's unlabeled images, from the received shared
    weights (after the client-side update, if any) and the client's own local parts.

    Metrics: ``num-examples`` (unlabeled images: the FedAvg weight), ``partition-id``,
    ``train_loss`` (mean loss of the round), ``train_s`` (the training steps, views included),
    ``images_per_s``, ``steps``, the round's time outside the steps: ``data_s`` (the images and
    their batches; the first use in a process decodes them into the cache) and ``other_s``
    (module, state, Trainer, client state file), ``work_s`` (all of it), ``cache_mib`` and
    ``cache_on_device`` (:func:`cache_metrics`); with a client-side
    update also ``divergence`` and ``mu`` (FedEMA) or ``global_predictor`` (FedU).
    """
    start = time.perf_counter()
    torch.set_num_threads(max(1, cfg.train.threads))
    travel = travel_prefixes(cfg)
    torch.manual_seed(cfg.seed)  # what does not travel starts as every client's initial state
    module = build_ssl(cfg, lr=round_lr(cfg, server_round))
    load_shared(module, state, cfg, travel)
    t = cfg.train
    seed = runtime.round_seed(cfg.seed, server_round, partition_id)
    rt = runtime.resolve(cfg)
    t_data = time.perf_counter()
    batches, n_images = training_batches(cfg, partition_id, seed, rt)
    data_s = time.perf_counter() - t_data
    if n_images < t.batch_size:
        raise ValueError(
            f"client {partition_id} has {n_images} unlabeled images, fewer than one batch "
            f"({t.batch_size}); lower train.batch_size"
        )
    saved, meta = _load_client_state(cfg, partition_id)
    if saved is None:
        module.start_local_parts()
        update = {}
    else:
        local = {k: v for k, v in saved.items() if not k.startswith(EXTRA) and k not in state}
        module.load_state_dict(local, strict=False)
        module.load_local_extra(
            {k[len(EXTRA) :]: v for k, v in saved.items() if k.startswith(EXTRA)}
        )
        update = (
            _client_update(cfg, module, state, saved, meta)
            if cfg.ssl.client_update != "none"
            else {}
        )
    runtime.seed_everything(seed)
    trainer = runtime.trainer(rt, **cfg.train.fit_limits())
    t0 = time.perf_counter()
    with runtime.layout(module, rt):
        trainer.fit(module, batches)
    train_s = time.perf_counter() - t0
    steps = int(trainer.global_step)
    loss = trainer.callback_metrics.get("train_loss")
    new = shared_state(module, cfg, travel)
    keep = {}
    if cfg.ssl.client_update == "fedema":
        lam = float(meta.get("fedema_lambda", 0.0))
        if not lam > 0 and not cfg.ssl.fedema_lambda > 0:
            online = [k for k in new if k.startswith(("backbone.", "projection_head."))]
            lam = fedssl_update.fedema_lambda(
                cfg.ssl.fedema_tau, fedssl_update.divergence(new, state, online)
            )
        keep["fedema_lambda"] = lam
    _save_client_state(cfg, partition_id, module, server_round, keep, travel)
    work_s = time.perf_counter() - start
    metrics = {
        "num-examples": n_images,
        "partition-id": int(partition_id),
        "train_loss": float(loss) if loss is not None else float("nan"),
        "train_s": train_s,
        "steps": steps,
        "images_per_s": steps * t.batch_size / train_s if train_s > 0 else 0.0,
        "data_s": data_s,
        "other_s": max(0.0, work_s - data_s - train_s),
        "work_s": work_s,
        **cache_metrics(batches),
        **update,
    }
    return new, metrics


def cache_metrics(batches) -> dict[str, float]:
    """Where the round's images came from: ``cache_mib`` (the cached images' size) and
    ``cache_on_device`` (1: on the training GPU, 0: host memory); nothing without the cache."""
    images = getattr(batches, "images", None)
    if not isinstance(images, ImageTensors):
        return {}
    return {
        "cache_mib": images.nbytes / 2**20,
        "cache_on_device": float(images.where.startswith("device")),
    }


def local_evaluate(
    cfg: ExperimentConfig, partition_id: int, state: dict[str, torch.Tensor]
) -> dict[str, float]:
    """kNN accuracy of the received (merged) backbone on this client's data; with
    ``ssl.local_layers``, of the client's own backbone: the merged layers and its local ones
    (from its state; as initialised before its first round). ``eval_s``: the whole call."""
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, cfg.train.threads))
    torch.manual_seed(cfg.seed)  # local layers before any training: the initial state's
    module = build_ssl(cfg)
    load_shared(module, state, cfg)
    local = local_layer_keys(cfg, module)
    if local:
        saved, _ = _load_client_state(cfg, partition_id)
        if saved is not None:
            module.load_state_dict({k: saved[k] for k in local if k in saved}, strict=False)
    acc = backbone_knn(MonitorSettings.of(cfg), partition_id, module)
    task = client_task(cfg.data, partition_id)
    return {
        "knn_acc": acc,
        "partition-id": int(partition_id),
        "num-examples": int(min(len(task.test), cfg.ssl.knn_queries or len(task.test))),
        "eval_s": time.perf_counter() - t0,
    }
