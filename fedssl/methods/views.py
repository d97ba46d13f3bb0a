"""Stage one's views and what they are made from: each client's view settings (the ``ssl``
section with its ``ssl.client_views`` overrides), lightly's transforms (``ssl.views: lightly``)
or batched views made on the training device (``batched``), and the batches a client trains on
in a round."""

from __future__ import annotations

import inspect
import math

from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from fedssl import runtime
from fedssl.config import ExperimentConfig
from fedssl.data.cache import Batches, cached_images
from fedssl.data.client_images import ImageDataset, client_task
from fedssl.data.transforms import normalize, pil_mode
from fedssl.methods.ssl import method_class
from fedssl.methods.ssl.batch_views import BatchViews
from fedssl.methods.ssl_recipe import method_settings, model_in_chans

__all__ = [
    "views_mode",
    "VIEW_KEYS",
    "BATCHED_VIEW_KEYS",
    "view_settings",
    "augmentation",
    "cache_side",
    "views_transform",
    "batch_views",
    "views_dataset",
    "views_loader",
    "training_batches",
]


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


def cache_side(cfg: ExperimentConfig, data=None) -> int:
    """The side of a client's cached training images: ``model.image_size``, or for images
    decoded from files (``data`` with ``paths``; JPEGs larger than the model's input) that times
    ``data.cache_side`` (1-4, checked where the config is loaded), so that batched views crop
    from a larger image than they output."""
    side = cfg.model.image_size
    if data is None or getattr(data, "paths", None) is None:
        return side
    return int(round(cfg.data.cache_side * side))


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


def views_loader(ds, batch_size: int, seed: int, rt: runtime.Runtime) -> DataLoader:
    """Shuffled batches of ``ds``'s views (last partial batch dropped: contrastive and
    batch-statistics losses want full batches), loaded with the runtime's workers and pinned
    memory."""
    return runtime.loader(rt, ds, batch_size, shuffle=True, drop_last=True, seed=seed)


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
    return views_loader(ds, cfg.train.batch_size, seed, rt), len(ds)
