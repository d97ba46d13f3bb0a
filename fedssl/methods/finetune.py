"""Stage two (paper 003): a client's own linear task head on the shared backbone.

A client attaches a linear head (its own classes) to the stage-one backbone and trains it on its
**labeled** part (25% of its data in the paper); the backbone is frozen (``linear``), retrained in
its last stage only (``partial``, the paper's "minimal retraining") or entirely (``full``).
It is scored twice, and both numbers are always reported under these names:

* ``unlabeled_acc``: on the client's unlabeled 75% (the images stage one trained SimCLR on,
  never their labels): paper 003's evaluation;
* ``test_acc``: on the dataset's own test split (never seen in either stage).

The labeled/unlabeled split is the stage-one run's (same ``data`` config and client position),
so the head never trains on an image it is scored on. ``finetune.labels_per_class`` keeps only
that many labeled images per class (label-scarce runs; the evaluation sets do not change).
``finetune.backbone: none`` trains the same architecture from random weights: the paper's
supervised "CL" baseline.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from fedssl import runtime
from fedssl.config import ConfigError, ExperimentConfig, save_config
from fedssl.data.client_images import IN_CHANS, ClientTask, ImageDataset, client_task, subsample
from fedssl.data.transforms import eval_transform, pil_mode, train_transform
from fedssl.methods.dp_sgd import PrivateFit, batches_per_epoch, plan
from fedssl.methods.heads import BackboneClassifier, save_head
from fedssl.methods.knn import with_own_statistics
from fedssl.methods.monitor import MonitorSettings, monitor_sets, statistics_images
from fedssl.methods.ssl_recipe import model_in_chans
from fedssl.methods.supervised import batches_accuracy
from fedssl.models.backbones import RawPixels, build_backbone, load_backbone

__all__ = [
    "BACKBONE_FILE",
    "resolve_backbone",
    "finetune_config",
    "client_index",
    "build_classifier",
    "labeled_indices",
    "check_backbone_fits",
    "image_side",
    "fit",
    "calibrate",
    "evaluate",
    "head_meta",
    "finetune",
    "timed_finetune",
    "monitor_baselines",
]

BACKBONE_FILE = "backbone.safetensors"


def resolve_backbone(spec: str, out_dir: str | Path = "runs") -> Path | None:
    """The backbone file ``finetune.backbone`` names.

    ``""``: the newest federated stage-one run's ``<out_dir>/*/backbone.safetensors`` (else the
    newest of any); a directory: its
    ``backbone.safetensors``; a file: itself; ``none``: no backbone (random init, returns None);
    ``pixels``: no backbone, the raw pixels (returns None; see :func:`build_classifier`).

    Raises:
        FileNotFoundError: nothing there (the message says how to make one).
    """
    if spec.lower() in ("none", "pixels"):
        return None
    if not spec:
        # newest first among federated stage-one runs (they keep a state.json), then any other
        # (e.g. the centralized-SSL reference of launch/compare.py)
        found = sorted(
            Path(out_dir).glob(f"*/{BACKBONE_FILE}"),
            key=lambda p: ((p.parent / "state.json").is_file(), p.stat().st_mtime),
        )
        if not found:
            raise FileNotFoundError(
                f"no stage-one backbone under {out_dir}/*/{BACKBONE_FILE}; run "
                f"`python launch/pretrain.py` first, or pass --backbone RUN_DIR_OR_FILE "
                f"(--backbone none trains from random weights)"
            )
        return found[-1]
    p = Path(spec)
    if p.is_dir():
        p = p / BACKBONE_FILE
        if not p.is_file():
            raise FileNotFoundError(
                f"{spec} holds no {BACKBONE_FILE}: not a finished stage-one run directory"
            )
    if not p.is_file():
        raise FileNotFoundError(f"no backbone file or run directory at {spec}")
    return p


def finetune_config(
    path: str | Path, overrides: list[str] | None = None
) -> tuple[ExperimentConfig, Path | None]:
    """The fine-tuning config and the backbone file it uses.

    ``path`` (e.g. ``configs/finetune/default.yaml``) gives the ``finetune`` settings; the
    ``data``, ``model`` and ``seed`` come from the stage-one run that produced the backbone (its
    ``config.yaml``), so every client's labeled/unlabeled split is the one stage one used. With
    ``finetune.backbone: none`` they come from the newest stage-one run when there is one, else
    from ``configs/pretrain/default.yaml``. ``overrides`` apply last (``data.*`` too).
    """
    from fedssl.config import apply_overrides, from_dict, load_config, read_config, to_dict

    ov = list(overrides or [])
    # where the backbone is (every value checked; the privacy settings against the run's
    # clients below, once its data is in)
    cfg = load_config(path, ov, relations=False)
    bb = resolve_backbone(cfg.finetune.backbone, cfg.out_dir)
    source = bb if bb is not None else _newest_backbone(cfg.out_dir)
    run_cfg = source.parent / "config.yaml" if source is not None else None
    if run_cfg is None or not run_cfg.is_file():
        run_cfg = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "default.yaml"
    data = read_config(path)
    if run_cfg.is_file():
        run = load_config(run_cfg)
        data.update({"data": to_dict(run.data), "model": to_dict(run.model), "seed": run.seed})
    cfg = from_dict(ExperimentConfig, apply_overrides(data, ov))  # every override, checked
    cfg.experiment = "finetune"
    return cfg, bb


def _newest_backbone(out_dir: str | Path) -> Path | None:
    try:
        return resolve_backbone("", out_dir)
    except FileNotFoundError:
        return None


def client_index(cfg: ExperimentConfig, client: str | int) -> int:
    """Position of ``client`` (a dataset name or a partition id) in ``data.clients``.

    A dataset that is not among the clients becomes the only client (``data.clients`` is set to
    ``[client]``), so any dataset can get a head on any backbone.
    """
    clients = cfg.data.clients
    if isinstance(client, int) or str(client).isdigit():
        pid = int(client)
        if not 0 <= pid < len(clients):
            raise ConfigError(f"client {pid} is outside data.clients {clients}")
        return pid
    if client in clients:
        if clients.count(client) > 1:
            raise ConfigError(
                f"{client!r} is listed {clients.count(client)} times in data.clients "
                f"(IID shards); name the client by its position instead"
            )
        return clients.index(client)
    cfg.data.clients = [str(client)]
    return 0


def _backbone(
    cfg: ExperimentConfig,
    path: Path | None,
    dataset: str | None = None,
    partition: int | None = None,
) -> tuple[torch.nn.Module, dict]:
    m = cfg.model
    if cfg.finetune.backbone.lower() == "pixels":
        if cfg.finetune.mode != "linear":
            raise ConfigError(
                f"finetune.backbone=pixels has no backbone to train in mode "
                f"{cfg.finetune.mode!r}: the raw-pixel baseline is finetune.mode=linear"
            )
        chans = model_in_chans(cfg)
        meta = {
            "backbone": "pixels",
            "in_chans": chans,
            "small_input": False,
            "image_size": m.image_size,
            "source": "raw pixels",
        }
        return RawPixels(chans, m.image_size), meta
    if path is None:
        torch.manual_seed(cfg.seed)
        meta = {
            "backbone": m.backbone,
            "in_chans": model_in_chans(cfg),
            "small_input": m.small_input,
            "image_size": m.image_size,
            "source": "random init",
        }
        net = build_backbone(m.backbone, in_chans=meta["in_chans"], small_input=m.small_input)
        return net, meta
    net, meta = load_backbone(path, client=dataset, partition=partition)
    meta = {
        **meta,
        "in_chans": int(meta.get("in_chans", 3)),
        "image_size": int(meta.get("image_size", m.image_size)),
        "source": str(path),
    }
    return net, meta


def build_classifier(
    cfg: ExperimentConfig,
    num_classes: int,
    path: Path | None,
    dataset: str | None = None,
    partition: int | None = None,
) -> tuple[BackboneClassifier, dict]:
    """Backbone (from ``path``, random when None, the raw pixels when ``finetune.backbone`` is
    ``pixels``) + a fresh linear head; returns the module and the backbone's metadata
    (``backbone``, ``in_chans``, ``image_size``, ``source``). ``dataset`` / ``partition``: the
    client the head is for (its dataset, its position in ``data.clients``), which completes a
    backbone whose clients kept some layers (``ssl.local_layers``) with its own.

    A random-init backbone (the CL baseline) always learns at the head's rate: a slower rate
    (``finetune.backbone_lr_scale``) is for protecting pretrained weights, which it has none of.
    So ``launch/finetune.py --backbone none --mode full`` and ``launch/compare.py``'s CL are
    one and the same baseline."""
    f = cfg.finetune
    net, meta = _backbone(cfg, path, dataset, partition)
    torch.manual_seed(cfg.seed + 1)
    module = BackboneClassifier(
        net,
        num_classes,
        mode=f.mode,
        optimizer=f.optimizer,
        lr=f.lr,
        backbone_lr_scale=1.0 if path is None else f.backbone_lr_scale,
        momentum=f.momentum,
        weight_decay=f.weight_decay,
    )
    return module, meta


def check_backbone_fits(dataset: str, meta: dict, side: int) -> None:
    """Refuse a backbone that cannot see ``dataset``'s images as they are: fewer channels than
    the images have (colour dropped), or an input size under a quarter of ``side`` (the shorter
    side of the client's images, in pixels).

    Raises:
        ConfigError: says what does not fit and the ways out.
    """
    chans, size = int(meta["in_chans"]), int(meta["image_size"])
    want = IN_CHANS.get(dataset, chans)
    way = (
        f"use a stage-one backbone trained on images like {dataset}'s (e.g. "
        "configs/pretrain/paper.yaml), or for the CL baseline --backbone none --set "
        f"model.image_size={min(224, side)} model.in_chans={max(chans, want)}"
    )
    what = f"the backbone ({meta['backbone']}, {meta['source']})"
    if chans < want:
        raise ConfigError(
            f"{what} takes {chans}-channel images; {dataset}'s have {want} (their colour would "
            f"be dropped); {way}"
        )
    if size * 4 < side:
        raise ConfigError(
            f"{what} sees {size} px images; {dataset}'s are {side} px and would be shrunk "
            f"{side // size}x; {way}"
        )


def image_side(task: ClientTask) -> int:
    """The shorter side of the client's first labeled image."""
    return min(task.train.pil(int(task.labeled[0])).size)


def labeled_indices(cfg: ExperimentConfig, task: ClientTask) -> np.ndarray:
    """The labeled images the head trains on (all, or ``labels_per_class`` per class)."""
    n = cfg.finetune.labels_per_class
    idx = task.labeled
    if n <= 0:
        return idx
    labels = task.train.labels[idx]
    counts = np.bincount(labels, minlength=task.num_classes)
    if counts.min() < n:
        raise ConfigError(
            f"finetune.labels_per_class={n}, but {task.name}'s labeled part has only "
            f"{int(counts.min())} images of its rarest class"
        )
    keep = []
    rng = np.random.default_rng(cfg.data.seed + 17)
    for c in range(task.num_classes):
        members = idx[labels == c]
        keep.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def fit(
    module: BackboneClassifier,
    cfg: ExperimentConfig,
    task: ClientTask,
    meta: dict,
    epochs: int,
    seed: int = 0,
    rt: runtime.Runtime | None = None,
) -> dict[str, float]:
    """Train ``module`` (head, and the backbone part its mode allows) on the labeled images,
    on ``rt``'s device and precision (default: resolved from ``cfg.runtime``).

    ``linear`` computes the frozen backbone's features once and trains the head on them (same
    result as passing images every epoch, without augmentation, many times faster).
    Returns ``train_loss`` (last epoch), ``train_s``, ``labeled`` (images used), ``epochs``;
    with ``privacy.dp_sgd`` (linear heads), the head trains by DP-SGD without data statistics
    (:meth:`~fedssl.methods.heads.BackboneClassifier.fix_standardisation`) and the result
    adds the ε spent (``epsilon`` at ``delta``) and the DP-SGD it ran.
    """
    f, t = cfg.finetune, cfg.train
    rt = rt or runtime.resolve(cfg)
    torch.set_num_threads(max(1, t.threads))
    idx = labeled_indices(cfg, task)
    size, chans = int(meta["image_size"]), int(meta["in_chans"])
    t0 = time.perf_counter()
    plain = ImageDataset(task.train, idx, eval_transform(size, chans), pil_mode(chans))
    if module.mode == "linear":
        x, y = runtime.predict(module.backbone, runtime.loader(rt, plain, t.eval_batch_size), rt)
        loader = runtime.loader(
            rt, TensorDataset(x, y), f.batch_size, shuffle=True, seed=seed, workers=False
        )
        module.features_input = True
    else:
        ds = ImageDataset(task.train, idx, train_transform(size, chans, f.augment), pil_mode(chans))
        loader = runtime.loader(rt, ds, f.batch_size, shuffle=True, seed=seed)
    private = _private_head(cfg, module, task, meta, len(idx), epochs, rt, seed)
    if private is not None:
        loader = private.loader(loader)
    trainer = runtime.trainer(rt, max_epochs=epochs)
    module.train()  # Lightning keeps the mode it finds (feature extraction left it in eval)
    try:
        with warnings.catch_warnings():  # frozen backbone parts are in eval mode on purpose
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
            trainer.fit(module, loader)
    finally:
        module.features_input = False
        if private is not None:
            private.close()
            module.private = None
    if module.mode != "linear":  # the backbone moved: its features are no longer x
        x, _ = runtime.predict(module.backbone, runtime.loader(rt, plain, t.eval_batch_size), rt)
    if private is None:
        module.calibrate_head(x)
    loss = trainer.callback_metrics.get("train_loss")
    out = {
        "train_loss": float(loss) if loss is not None else float("nan"),
        "train_s": time.perf_counter() - t0,
        "labeled": int(len(idx)),
        "epochs": int(epochs),
    }
    if private is not None:
        steps = int(trainer.global_step)
        out.update(private.dp.record(steps), epsilon=private.dp.epsilon(steps))
        out["delta"] = private.dp.delta
        if private.reproducible:  # the noise came from privacy.dp_sgd.noise_seed
            out["reproducible_noise"] = ["privacy.dp_sgd"]
    return out


def _private_head(
    cfg: ExperimentConfig,
    module: BackboneClassifier,
    task: ClientTask,
    meta: dict,
    examples: int,
    epochs: int,
    rt: runtime.Runtime,
    seed: int,
) -> PrivateFit | None:
    """DP-SGD for a head's fit of ``epochs`` on ``examples`` labeled images
    (``privacy.dp_sgd``; None when off), attached to ``module``; its noise is secure unless
    ``privacy.dp_sgd.noise_seed`` is set (then reproducible per fit ``seed``). The head's
    standardisation is frozen at the backbone's feature statistics on the client's *unlabeled*
    images (stage one's training images, outside the labeled set DP-SGD protects)."""
    dp = cfg.privacy.dp_sgd
    if not dp.enabled:
        return None
    if module.mode != "linear":
        raise ConfigError(
            f"privacy.dp_sgd trains linear heads, not finetune.mode={module.mode!r}: the "
            "backbone's BatchNorm mixes the examples of a batch"
        )
    bs = cfg.finetune.batch_size
    size, chans = int(meta["image_size"]), int(meta["in_chans"])
    outside = ImageDataset(task.train, task.unlabeled, eval_transform(size, chans), pil_mode(chans))
    feats = None
    if len(task.unlabeled) > 1:
        loader = runtime.loader(rt, outside, cfg.train.eval_batch_size)
        feats, _ = runtime.predict(module.backbone, loader, rt)
    module.fix_standardisation(feats)
    steps = epochs * batches_per_epoch(examples, bs)
    noise_seed = None if dp.noise_seed is None else runtime.round_seed(dp.noise_seed, seed, 0)
    private = PrivateFit(plan(dp, examples, bs, steps), module.head, noise_seed)
    module.private = private
    return private


def calibrate(
    module: BackboneClassifier,
    cfg: ExperimentConfig,
    task: ClientTask,
    meta: dict,
    rt: runtime.Runtime | None = None,
) -> None:
    """Set the head's feature statistics to those of ``module``'s current backbone on the
    labeled images (no gradients, no labels): see
    :meth:`~fedssl.methods.heads.BackboneClassifier.calibrate_head`."""
    rt = rt or runtime.resolve(cfg)
    size, chans = int(meta["image_size"]), int(meta["in_chans"])
    plain = ImageDataset(
        task.train,
        labeled_indices(cfg, task),
        eval_transform(size, chans),
        pil_mode(chans),
    )
    x, _ = runtime.predict(
        module.backbone, runtime.loader(rt, plain, cfg.train.eval_batch_size), rt
    )
    module.calibrate_head(x)


def evaluate(
    module: BackboneClassifier,
    cfg: ExperimentConfig,
    task: ClientTask,
    meta: dict,
    rt: runtime.Runtime | None = None,
) -> dict[str, float]:
    """``unlabeled_acc`` (the client's unlabeled part, paper 003's protocol) and ``test_acc``
    (the dataset's test split), each on at most ``finetune.eval_max`` images (stratified), on
    ``rt``'s device and precision (default: resolved from ``cfg.runtime``)."""
    rt = rt or runtime.resolve(cfg)
    size, chans = int(meta["image_size"]), int(meta["in_chans"])
    tf = eval_transform(size, chans)
    cap, seed = cfg.finetune.eval_max, cfg.data.seed
    bs = cfg.train.eval_batch_size
    out = {}
    for name, data, idx in (
        ("unlabeled", task.train, task.unlabeled),
        ("test", task.test, np.arange(len(task.test))),
    ):
        keep = idx[subsample(data.labels[idx], cap, seed)]
        loader = runtime.loader(rt, ImageDataset(data, keep, tf, pil_mode(chans)), bs)
        out[f"{name}_acc"] = batches_accuracy(module, loader, rt)
        out[f"{name}_n"] = int(len(keep))
    return out


def head_meta(cfg: ExperimentConfig, task: ClientTask, meta: dict, **extra) -> dict:
    """What a head file records: client, classes, mode and the backbone it sits on."""
    return {
        "client": task.name,
        "num_classes": task.num_classes,
        "mode": cfg.finetune.mode,
        **extra,
        **{k: meta[k] for k in ("backbone", "in_chans", "image_size", "source")},
    }


def finetune(
    cfg: ExperimentConfig,
    client: str | int,
    run_dir: str | Path | None = None,
    device_index: int = 0,
    built: tuple[BackboneClassifier, dict] | None = None,
) -> dict:
    """Train and score one client's head; write ``<run_dir>/head.safetensors`` and
    ``results.json``. Returns the results (accuracies, sizes, times, backbone source).

    ``device_index``: the GPU to use on a machine with several (``launch/compare.py --jobs``
    hands them out round-robin; jobs beyond the GPU count share them). ``built``: the
    ``(classifier, metadata)`` :func:`build_classifier` already made for this config and client
    (the launcher's check), so the backbone file is not read twice."""
    f = cfg.finetune
    rt = runtime.resolve(cfg, device_index=device_index)
    if f.epochs < 1:
        raise ConfigError(f"finetune.epochs must be >= 1, got {f.epochs}")
    path = resolve_backbone(f.backbone, cfg.out_dir)
    pid = client_index(cfg, client)
    task = client_task(cfg.data, pid)
    module, meta = (
        built
        if built is not None
        else build_classifier(cfg, task.num_classes, path, task.name, pid)
    )
    check_backbone_fits(task.name, meta, image_side(task))
    if path is not None and meta["backbone"] != cfg.model.backbone:
        print(
            f"[fedssl] note: the backbone file holds {meta['backbone']!r}; "
            f"model.backbone {cfg.model.backbone!r} is ignored",
            flush=True,
        )
    own_stats = path is not None and f.bn == "client" and f.mode != "full"
    if own_stats:  # frozen parts would normalise with every client's mean statistics
        monitor = MonitorSettings.of(cfg)
        images = statistics_images(monitor, pid, int(meta["in_chans"]), int(meta["image_size"]))
        module.backbone = with_own_statistics(module.backbone, images, rt)
    rd = Path(run_dir) if run_dir is not None else cfg.run_dir()
    rd.mkdir(parents=True, exist_ok=True)
    save_config(cfg, rd / "config.yaml")
    runtime.seed_everything(cfg.seed)
    with runtime.layout(module, rt):  # one layout change around training and scoring
        train = fit(module, cfg, task, meta, f.epochs, seed=cfg.seed, rt=rt)
        t0 = time.perf_counter()
        scores = evaluate(module, cfg, task, meta, rt)
    results = {
        "client": task.name,
        "partition_id": pid,
        "mode": f.mode,
        "backbone": meta["backbone"],
        "backbone_source": meta["source"],
        "backbone_bn": "client" if own_stats else "file",
        "num_classes": task.num_classes,
        "device": rt.summary(),
        **train,
        **scores,
        "eval_s": time.perf_counter() - t0,
    }
    save_head(module, rd / "head.safetensors", head_meta(cfg, task, meta))
    from fedssl.runs import write_text_atomic

    write_text_atomic(rd / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def timed_finetune(
    cfg: ExperimentConfig, client: str | int, run_dir: str | Path, device_index: int = 0
) -> dict:
    """:func:`finetune` plus its wall time (``wall_s``); a top-level function, so a process
    pool can run it (``launch/compare.py`` trains the clients' heads side by side)."""
    t = time.perf_counter()
    r = finetune(cfg, client, run_dir, device_index)
    r["wall_s"] = time.perf_counter() - t
    return r


def monitor_baselines(
    cfg: ExperimentConfig,
    partition_id: int,
    epochs: int | None = None,
    kinds: tuple[str, ...] = ("pixels_linear", "supervised"),
) -> dict[str, float]:
    """Supervised references for the stage-one kNN monitor, each scored top-1 on the monitor's
    own queries (:func:`~fedssl.methods.monitor.monitor_sets`), so they stand beside the
    backbone's kNN on equal terms:

    * ``pixels_linear``: a linear head on the raw pixels;
    * ``supervised``: ``model.backbone`` from random init trained end to end with a linear head
      (the paper's CL baseline).

    Both train on the client's labeled images with their labels (the kNN bank, unless
    ``ssl.knn_bank`` caps it) with stage two's recipe (``finetune.*``; ``epochs`` overrides
    ``finetune.epochs``); ``kinds`` picks which (the pixel head does not depend on
    ``model.backbone``). A representation whose kNN trails ``supervised`` has not yet earned
    a label-scarce client anything that the same labels would not give it directly.
    """
    import copy

    if cfg.finetune.labels_per_class:
        raise ConfigError("monitor_baselines trains on every labeled image: labels_per_class=0")
    task = client_task(cfg.data, partition_id)
    out = {}
    for key, backbone, mode in (
        ("pixels_linear", "pixels", "linear"),
        ("supervised", "none", "full"),
    ):
        if key not in kinds:
            continue
        c = copy.deepcopy(cfg)
        c.finetune.backbone, c.finetune.mode = backbone, mode
        c.finetune.epochs = epochs or c.finetune.epochs
        module, meta = build_classifier(c, task.num_classes, None)
        fit(module, c, task, meta, c.finetune.epochs, seed=c.seed)
        _, rt, _, queries = monitor_sets(MonitorSettings.of(c), partition_id, int(meta["in_chans"]))
        module.eval()
        out[key] = batches_accuracy(module, queries, rt)
    return out
