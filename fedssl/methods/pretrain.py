"""Stage one on one machine: the SSL module a config describes, its views and loader, the kNN
monitor of a backbone on one client's data, and the centralized reference (SSL on the union of
the clients' unlabeled images). The federated adapter (:mod:`fedssl.federation.pretraining`)
and the studies build on these; nothing here imports Flower.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from fedssl import runtime
from fedssl.config import ExperimentConfig, round_lr
from fedssl.data.cache import Batches, cached_images
from fedssl.data.client_images import ImageDataset, client_task, task_in_chans
from fedssl.data.transforms import eval_transform, normalize, pil_mode
from fedssl.methods.knn import extract_features, knn_predictions, top1, with_own_statistics
from fedssl.methods.monitor import Normalized, monitor_images, monitor_indices
from fedssl.methods.ssl import method_class
from fedssl.methods.ssl.base import SSLMethod, recipe
from fedssl.methods.ssl.batch_views import BatchViews

__all__ = [
    "CENTRAL",
    "model_in_chans",
    "method_settings",
    "build_ssl",
    "views_mode",
    "VIEW_KEYS",
    "BATCHED_VIEW_KEYS",
    "view_settings",
    "augmentation",
    "check_ssl",
    "views_transform",
    "batch_views",
    "local_layer_keys",
    "views_dataset",
    "views_loader",
    "training_batches",
    "monitor_sets",
    "statistics_images",
    "backbone_knn",
    "backbone_predictions",
    "pixels_knn",
    "pixels_predictions",
    "backbone_meta",
    "pretrain_centralized",
]

#: the "client id" of a centralized run in :func:`fedssl.runtime.round_seed`
CENTRAL = -1


def model_in_chans(cfg: ExperimentConfig) -> int:
    """The backbone's input channels: ``model.in_chans``, or (0) the most any client's data has."""
    return cfg.model.in_chans or task_in_chans(cfg.data)


#: config fields that set a method's recipe argument of the same name
_RECIPE_FIELDS = {
    "model": ("proj_hidden", "proj_out", "proj_layers", "pred_hidden"),
    "ssl": (
        "temperature",
        "target_momentum",
        "queue_size",
        "prototypes",
        "teacher_temperature",
        "head_batch_norm",
        "local_views",
        "redundancy_weight",
    ),
}


def method_settings(cfg: ExperimentConfig, warn: bool = True) -> dict:
    """The configured method's recipe with the config's settings applied.

    A setting the method does not have (e.g. the default config's SimCLR ``ssl.temperature``
    under ``--set ssl.method=byol``) is ignored, with a warning naming the method's settings;
    an optimizer other than the one the method trains with (its ``TRAIN``) is warned about
    with the settings to add. ``warn=False``: no warnings (builders: :func:`check_ssl`, which a
    launcher runs once before anything starts, has said it already).

    Raises:
        ValueError: a travelling part the method does not have, or FedU without a travelling
            prediction head.
    """
    cls = method_class(cfg.ssl.method)
    settings = recipe(cls)
    for section, names in _RECIPE_FIELDS.items():
        for name in names:
            value = getattr(getattr(cfg, section), name)
            if value is None:
                continue
            if name not in settings:
                # e.g. the default config's SimCLR temperature under --set ssl.method=byol
                if warn:
                    warnings.warn(
                        f"{section}.{name}={value} does not apply to ssl.method={cls.name} and is "
                        f"ignored (its settings: {', '.join(settings)})",
                        UserWarning,
                        stacklevel=2,
                    )
                continue
            settings[name] = value
    if warn:
        _check_train_recipe(cfg, cls)
    parts = cls.check_travel(cfg.ssl.travel)
    if cfg.ssl.client_update == "fedu" and "prediction_head" not in parts:
        raise ValueError(
            f"ssl.client_update=fedu updates a travelling prediction head; {cls.name} sends none "
            "(use byol or simsiam, or add prediction_head to ssl.travel)"
        )
    return settings


def _check_train_recipe(cfg: ExperimentConfig, cls) -> None:
    """Warn when the method names an optimizer (its ``TRAIN``) and the config trains with
    another: VICReg, Barlow Twins and DINO diverge at SimCLR's SGD 0.06, so
    ``--set ssl.method=vicreg`` on an SGD config would quietly train a useless backbone. A
    config that sets the method's optimizer (any rate) is taken as deliberate."""
    want = dict(cls.TRAIN)
    if not want or cfg.train.optimizer == want.get("optimizer", cfg.train.optimizer):
        return
    recipe_text = " ".join(f"{k}={v}" for k, v in want.items())
    fix = " ".join(f"train.{k}={v}" for k, v in want.items())
    warnings.warn(
        f"ssl.method={cls.name} trains with {recipe_text} (its recipe, "
        f"{cls.__module__}.{cls.__name__}.TRAIN); this run uses train.optimizer="
        f"{cfg.train.optimizer} train.lr={cfg.train.lr}, at which it may not learn. "
        f"To use the recipe: --set {fix}",
        UserWarning,
        stacklevel=3,
    )


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


def views_mode(cfg: ExperimentConfig) -> str:
    """Where the configured method's views are made: ``batched`` or ``lightly``
    (``ssl.views: auto`` is batched wherever the method's views can be batched)."""
    v = cfg.ssl.views
    if v != "auto":
        return v
    return "batched" if method_class(cfg.ssl.method).BATCH_VIEWS is not None else "lightly"


#: the ``ssl`` view settings a client may set differently (``ssl.client_views.<dataset>``)
VIEW_KEYS = ("min_scale", "cj_prob", "cj_strength", "hf_prob", "rr_prob", "rr_degrees")
#: view settings only batched views have (``ssl.views: batched``)
BATCHED_VIEW_KEYS = ("elastic_prob", "elastic_alpha", "elastic_sigma", "crop_ratio")


def view_settings(cfg: ExperimentConfig, partition_id: int | None = None) -> dict[str, float]:
    """Client ``partition_id``'s view settings: the ``ssl`` section's, with the overrides of
    ``ssl.client_views.<its dataset>`` applied (``None``: the section's own; every override's
    dataset and keys are checked either way).

    Raises:
        ValueError: an override for a dataset no client holds, an unknown view setting, a
            probability outside [0, 1], a crop scale outside (0, 1], ``rr_prob`` > 0 without
            a positive ``rr_degrees``, an elastic distortion without batched views or with a
            negative strength or non-positive smoothing, or a ``crop_ratio`` below 1 or, other
            than torchvision's 4/3, without batched views.
    """
    s, names = cfg.ssl, list(cfg.data.clients)
    for name, over in s.client_views.items():
        if name not in names:
            raise ValueError(
                f"ssl.client_views.{name}: no client holds {name!r} "
                f"(data.clients: {', '.join(names) or 'none'})"
            )
        unknown = sorted(set(over) - set(VIEW_KEYS) - set(BATCHED_VIEW_KEYS))
        if unknown:
            raise ValueError(
                f"ssl.client_views.{name}: unknown view setting {', '.join(unknown)} "
                f"(allowed: {', '.join(VIEW_KEYS + BATCHED_VIEW_KEYS)})"
            )
    v, where = {k: getattr(s, k) for k in VIEW_KEYS + BATCHED_VIEW_KEYS}, "ssl"
    if partition_id is not None:
        name = names[partition_id]
        v.update(s.client_views.get(name, {}))
        where = f"ssl (client {partition_id}: {name})"
    for k in ("cj_prob", "hf_prob", "rr_prob", "elastic_prob"):
        if not 0.0 <= v[k] <= 1.0:
            raise ValueError(f"{where}: {k}={v[k]} must be a probability in [0, 1]")
    if not 0.0 < v["min_scale"] <= 1.0:
        raise ValueError(f"{where}: min_scale={v['min_scale']} must be in (0, 1]")
    if v["rr_prob"] > 0 and not v["rr_degrees"] > 0:
        raise ValueError(
            f"{where}: rr_prob={v['rr_prob']} needs rr_degrees > 0 (got {v['rr_degrees']})"
        )
    if not v["crop_ratio"] >= 1.0:
        raise ValueError(
            f"{where}: crop_ratio={v['crop_ratio']} must be >= 1 (aspect ratios are drawn from "
            "[1 / crop_ratio, crop_ratio]; 1 keeps the image's)"
        )
    batched = views_mode(cfg) == "batched"
    if not math.isclose(v["crop_ratio"], 4 / 3) and not batched:
        raise ValueError(
            f"{where}: crop_ratio={v['crop_ratio']} needs ssl.views=batched "
            "(lightly's crops draw aspect ratios from torchvision's 3/4-4/3)"
        )
    if v["elastic_prob"] > 0:
        if not batched:
            raise ValueError(
                f"{where}: elastic_prob={v['elastic_prob']} needs ssl.views=batched "
                "(lightly's transforms have no elastic distortion)"
            )
        if not (v["elastic_alpha"] >= 0 and v["elastic_sigma"] > 0):
            raise ValueError(
                f"{where}: elastic_alpha must be >= 0 and elastic_sigma > 0 (got "
                f"{v['elastic_alpha']}, {v['elastic_sigma']})"
            )
    return v


def augmentation(cfg: ExperimentConfig, partition_id: int | None = None) -> dict:
    """The view augmentation every method's lightly transform takes: crops, colour jitter,
    flips, rotations (client ``partition_id``'s: :func:`view_settings`), normalisation. Blur
    defaults to 0.5 for images of 64 px and more and to 0 below (a 28 px image has little to
    blur); grayscale conversion is off for one channel.

    Raises:
        ValueError: from :func:`view_settings`.
    """
    v, size, chans = view_settings(cfg, partition_id), cfg.model.image_size, model_in_chans(cfg)
    return {
        "input_size": size,
        "cj_prob": v["cj_prob"],
        "cj_strength": v["cj_strength"],
        "min_scale": v["min_scale"],
        "hf_prob": v["hf_prob"],
        "rr_prob": v["rr_prob"],
        "rr_degrees": v["rr_degrees"] if v["rr_prob"] > 0 else None,
        "gaussian_blur": 0.5 if size >= 64 else 0.0,
        "random_gray_scale": 0.2 if chans == 3 else 0.0,
        "normalize": normalize(chans),
    }


def local_layer_keys(cfg: ExperimentConfig, module: SSLMethod) -> frozenset[str]:
    """State-dict keys of ``module`` (``backbone.`` ...) in the backbone layers each client
    keeps (``ssl.local_layers``): ``batchnorm`` names every BatchNorm layer of the backbone, any
    other entry a module of the backbone and everything under it.

    Raises:
        ValueError: an entry that names no module of the backbone, or entries that cover all of
            it (nothing of the backbone would be shared).
    """
    names = cfg.ssl.local_layers
    if not names:
        return frozenset()
    modules = dict(module.backbone.named_modules())
    prefixes = []
    for name in names:
        if name == "batchnorm":
            found = [
                n
                for n, m in modules.items()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            ]
            if not found:
                raise ValueError(f"ssl.local_layers: {cfg.model.backbone} has no BatchNorm layer")
            prefixes += [f"backbone.{n}." for n in found]
        elif name in modules and name:
            prefixes.append(f"backbone.{name}.")
        else:
            top = [n for n in modules if n and "." not in n]
            raise ValueError(
                f"ssl.local_layers: {cfg.model.backbone} has no module {name!r} (use "
                f"'batchnorm' or a module name, e.g. one of {', '.join(top)})"
            )
    sd_keys = module.state_dict().keys()
    keys = frozenset(k for k in sd_keys if k.startswith(tuple(prefixes)))
    if all(k in keys for k in sd_keys if k.startswith("backbone.")):
        raise ValueError(
            f"ssl.local_layers {names} keep the whole backbone on the clients: nothing would be "
            "shared"
        )
    return keys


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
    _check_bn_images(cfg)
    batch_views(cfg)
    if cfg.ssl.local_layers:
        local_layer_keys(cfg, build_ssl(cfg))


def cache_side(cfg: ExperimentConfig, data=None) -> int:
    """The side of a client's cached training images: ``model.image_size``, or for images
    decoded from files (``data`` with ``paths``; JPEGs larger than the model's input) that times
    ``data.cache_side`` (1-4, checked where the config is loaded), so that batched views crop
    from a larger image than they output."""
    side = cfg.model.image_size
    if data is None or getattr(data, "paths", None) is None:
        return side
    return int(round(cfg.data.cache_side * side))


def _check_bn_images(cfg: ExperimentConfig) -> int:
    n = cfg.ssl.knn_bn_images
    if n < 0:
        raise ValueError(f"ssl.knn_bn_images must be >= 0 (0: every image), got {n}")
    return n


def views_transform(cfg: ExperimentConfig, partition_id: int | None = None):
    """The configured method's lightly views of client ``partition_id`` (``None``: the ``ssl``
    section's, without client overrides): two per image; DINO adds small local crops."""
    cls = method_class(cfg.ssl.method)
    extra = {}
    if "local_views" in inspect.signature(cls.views).parameters:
        extra["local_views"] = method_settings(cfg, warn=False)["local_views"]
    return cls.views(**augmentation(cfg, partition_id), **extra)


def batch_views(cfg: ExperimentConfig) -> BatchViews | None:
    """With ``ssl.views: batched``, what makes the configured method's views from a batch of
    images on its device: one group per client (its :func:`augmentation`; the batch's second
    element is the client index, see :func:`views_dataset`); ``None`` with lightly's views.

    Raises:
        ValueError: the method's views cannot be batched (DINO's crops of two sizes).
    """
    if views_mode(cfg) == "lightly":
        return None
    cls = method_class(cfg.ssl.method)
    if cls.BATCH_VIEWS is None:  # asked for explicitly (auto falls back to lightly)
        raise ValueError(
            f"ssl.views=batched: {cls.name}'s views cannot be batched yet (crops of two sizes); "
            "use ssl.views=lightly"
        )
    groups = []
    for pid in list(range(len(cfg.data.clients))) or [None]:
        only_batched = {k: view_settings(cfg, pid)[k] for k in BATCHED_VIEW_KEYS}
        groups.append({**augmentation(cfg, pid), **only_batched})
    return BatchViews(groups, cls.BATCH_VIEWS)


class _ClientImages(TorchDataset):
    """``(image, client index)`` pairs: what batched views are made from (the index picks the
    client's view settings)."""

    def __init__(self, images: ImageDataset, client: int):
        self.images, self.client = images, int(client)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i][0], self.client


def views_dataset(cfg: ExperimentConfig, partition_id: int) -> TorchDataset:
    """Client ``partition_id``'s unlabeled images as what stage one trains on: their views
    (``ssl.views: lightly``) or, for batched views, ``(uint8 image, partition_id)`` pairs of
    the images resized and centre-cropped to ``model.image_size``."""
    task = client_task(cfg.data, partition_id)
    mode = pil_mode(model_in_chans(cfg))
    if views_mode(cfg) == "lightly":
        transform = views_transform(cfg, partition_id)
        return ImageDataset(task.train, task.unlabeled, transform, mode=mode)
    import torchvision.transforms as T

    size = cfg.model.image_size
    transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])
    return _ClientImages(ImageDataset(task.train, task.unlabeled, transform, mode), partition_id)


def views_loader(
    cfg: ExperimentConfig, ds, seed: int, rt: runtime.Runtime | None = None
) -> DataLoader:
    """Shuffled batches of views (last partial batch dropped: contrastive and batch-statistics
    losses want full batches),
    loaded with the runtime's workers and pinned memory."""
    rt = rt or runtime.resolve(cfg)
    return runtime.loader(rt, ds, cfg.train.batch_size, shuffle=True, drop_last=True, seed=seed)


def training_batches(
    cfg: ExperimentConfig, partition_id: int, seed: int, rt: runtime.Runtime | None = None
) -> tuple[object, int]:
    """What client ``partition_id`` trains on in one round, and how many images that is:
    with batched views and the image cache (``data.cache`` not ``off``), shuffled
    ``(uint8 images, partition_id)`` batches drawn on index tensors from the cached unlabeled
    images (decoded once per process, on the training device when they fit); otherwise the
    loader of :func:`views_dataset`. The last partial batch is dropped either way."""
    rt = rt or runtime.resolve(cfg)
    if views_mode(cfg) == "batched" and cfg.data.cache != "off":
        task = client_task(cfg.data, partition_id)
        images = cached_images(
            task.train,
            task.unlabeled,
            cache_side(cfg, task.train),
            model_in_chans(cfg),
            device=rt.device,
            mode=cfg.data.cache,
            share=cfg.data.cache_gpu_share,
        )
        b = Batches(images, cfg.train.batch_size, shuffle=True, drop_last=True, seed=seed,
                    group=partition_id)  # fmt: skip
        return b, len(images)
    ds = views_dataset(cfg, partition_id)
    return views_loader(cfg, ds, seed, rt), len(ds)


def _indices(cfg: ExperimentConfig, partition_id: int):
    s = cfg.ssl
    task = client_task(cfg.data, partition_id)
    idx = monitor_indices(
        task, partition_id, cfg.data.seed, s.knn_bank, s.knn_queries, _check_bn_images(cfg)
    )
    return task, idx


def monitor_sets(cfg: ExperimentConfig, partition_id: int, in_chans: int):
    """The kNN monitor's sets: ``(task, runtime, bank, queries)``, the bank being the client's
    labeled part (at most ``ssl.knn_bank`` images) and the queries its test split (at most
    ``ssl.knn_queries``), each a loader of evaluation-transformed ``(images, labels)`` batches
    (:func:`~fedssl.methods.monitor.monitor_indices`). Every baseline the monitor is compared
    with is scored on these same queries."""
    task, (bank_idx, query_idx, _) = _indices(cfg, partition_id)
    tf = eval_transform(cfg.model.image_size, in_chans)
    mode = pil_mode(in_chans)
    rt = runtime.resolve(cfg)

    def loader(data, idx: np.ndarray):
        return runtime.loader(rt, ImageDataset(data, idx, tf, mode), cfg.train.eval_batch_size)

    return task, rt, loader(task.train, bank_idx), loader(task.test, query_idx)


def statistics_images(
    cfg: ExperimentConfig, partition_id: int, in_chans: int, image_size: int | None = None
) -> DataLoader:
    """The images a client re-estimates BatchNorm statistics on (``ssl.knn_bn: client``): at
    most ``ssl.knn_bn_images`` (0: all) of its training images, drawn at random without looking
    at labels, evaluation-transformed. The loader yields ``(images, labels)``; the labels are
    never used. ``image_size``: the backbone's input side (default: ``model.image_size``).

    Raises:
        ValueError: a negative ``ssl.knn_bn_images``.
    """
    task, (_, _, idx) = _indices(cfg, partition_id)
    tf = eval_transform(image_size or cfg.model.image_size, in_chans)
    ds = ImageDataset(task.train, idx, tf, pil_mode(in_chans))
    return runtime.loader(runtime.resolve(cfg), ds, cfg.train.eval_batch_size)


def _monitor_batches(cfg: ExperimentConfig, partition_id: int, in_chans: int):
    """``(task, runtime, bank, queries, statistics)`` batches of the monitor: from the image
    cache (``data.cache`` not ``off``: decoded once per process) or per-image loaders."""
    rt = runtime.resolve(cfg)
    if cfg.data.cache == "off":
        task, rt, bank, queries = monitor_sets(cfg, partition_id, in_chans)
        return task, rt, bank, queries, lambda: statistics_images(cfg, partition_id, in_chans)
    task, idx = _indices(cfg, partition_id)
    d = cfg.data
    sets = monitor_images(task, idx, cfg.model.image_size, in_chans, device=rt.device,
                          cache=d.cache, share=d.cache_gpu_share)  # fmt: skip
    n = cfg.train.eval_batch_size
    bank, queries = Normalized(sets.bank, n), Normalized(sets.queries, n)
    return task, rt, bank, queries, lambda: Normalized(sets.statistics, n)


def backbone_predictions(
    cfg: ExperimentConfig, partition_id: int, module: SSLMethod
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The kNN monitor on this client, query by query: ``(predicted classes, labels, number of
    classes)`` of ``module``'s backbone, labeled part = bank, test = queries, with the client's
    own BatchNorm statistics (``ssl.knn_bn: client``, the default:
    :func:`~fedssl.methods.knn.with_own_statistics` on :func:`statistics_images`) or the
    weights' own (``merged``). ``module`` is never changed."""
    s = cfg.ssl
    chans = module.backbone_in_chans
    task, rt, bank_batches, query_batches, statistics = _monitor_batches(cfg, partition_id, chans)
    backbone = module.backbone
    if s.knn_bn == "client":
        backbone = with_own_statistics(backbone, statistics(), rt)
    bank, bank_y = extract_features(backbone, bank_batches, rt)
    queries, query_y = extract_features(backbone, query_batches, rt)
    pred = knn_predictions(bank, bank_y, queries, task.num_classes, s.knn_k, s.knn_t)
    return pred, query_y, task.num_classes


def backbone_knn(cfg: ExperimentConfig, partition_id: int, module: SSLMethod) -> float:
    """kNN accuracy of ``module``'s backbone on this client (:func:`backbone_predictions`)."""
    pred, labels, _ = backbone_predictions(cfg, partition_id, module)
    return top1(pred, labels)


def pixels_predictions(
    cfg: ExperimentConfig, partition_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The baseline a backbone's kNN must beat, query by query (as
    :func:`backbone_predictions`): the same kNN (bank, queries, k, temperature, cosine
    similarity) on the raw pixels the backbone sees, the better of pixels in [0, 1] and
    normalised pixels (so no scaling choice weakens it)."""
    s, chans = cfg.ssl, model_in_chans(cfg)
    task, _, bank_batches, query_batches, _ = _monitor_batches(cfg, partition_id, chans)
    norm = normalize(chans)
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)

    def pixels(batches):
        x, y = zip(*batches, strict=True)
        x, y = torch.cat(x).float().cpu(), torch.cat(y).cpu()
        return x, x * std + mean, y  # normalised, [0, 1], labels

    bank_n, bank_01, bank_y = pixels(bank_batches)
    query_n, query_01, query_y = pixels(query_batches)
    preds = [
        knn_predictions(
            F.normalize(b.flatten(1), dim=1),
            bank_y,
            F.normalize(q.flatten(1), dim=1),
            task.num_classes,
            s.knn_k,
            s.knn_t,
        )
        for b, q in ((bank_n, query_n), (bank_01, query_01))
    ]
    best = max(preds, key=lambda p: top1(p, query_y))  # the first on a tie
    return best, query_y, task.num_classes


def pixels_knn(cfg: ExperimentConfig, partition_id: int) -> float:
    """kNN accuracy on the raw pixels (:func:`pixels_predictions`): the monitor's baseline."""
    pred, labels, _ = pixels_predictions(cfg, partition_id)
    return top1(pred, labels)


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
