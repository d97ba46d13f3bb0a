"""The images of the kNN monitor on one client, chosen once and read from the image cache.

A client scores a backbone by weighted kNN with its labeled part as the bank and its test split
as the queries, after re-estimating BatchNorm statistics on its own training images
(:mod:`fedssl.methods.knn`). Which images make up each set is decided here, from plain values
(:func:`monitor_indices`), for both ways of reading them: the cached ``uint8`` tensors of
:mod:`fedssl.data.cache` (:func:`monitor_images`, the default) and the per-image loaders of
:func:`fedssl.methods.monitor.monitor_sets` (``data.cache: off``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fedssl import runtime
from fedssl.config import DataConfig, ExperimentConfig, RuntimeConfig
from fedssl.data.cache import ImageTensors, cached_images
from fedssl.data.client_images import ClientTask, ImageDataset, client_task, subsample
from fedssl.data.transforms import eval_transform, normalize, pil_mode
from fedssl.methods.knn import extract_features, knn_predictions, top1, with_own_statistics
from fedssl.methods.ssl.base import SSLMethod
from fedssl.methods.ssl_recipe import model_in_chans

__all__ = [
    "MonitorSettings",
    "monitor_indices",
    "MonitorImages",
    "monitor_images",
    "Normalized",
    "bn_image_count",
    "monitor_sets",
    "statistics_images",
    "backbone_predictions",
    "backbone_knn",
    "pixels_predictions",
    "pixels_knn",
]


def monitor_indices(
    task: ClientTask, pid: int, data_seed: int, bank: int, queries: int, bn_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bank, queries, statistics)`` indices of client ``pid``: at most ``bank`` labeled
    training images (stratified; 0: all), at most ``queries`` test images (stratified; 0: all),
    and at most ``bn_images`` of its training images (labeled and unlabeled, drawn without
    looking at labels; 0: all) for its BatchNorm statistics, sorted. The bank and statistics
    index ``task.train``, the queries ``task.test``."""
    seed = data_seed * 1000 + pid
    bank_idx = task.labeled[subsample(task.train.labels[task.labeled], bank, seed)]
    query_idx = subsample(task.test.labels, queries, seed)
    own = np.concatenate([task.unlabeled, task.labeled])
    rng = np.random.default_rng(seed)
    bn_idx = np.sort(rng.permutation(own)[:bn_images] if bn_images > 0 else own)
    return bank_idx, query_idx, bn_idx


@dataclass(frozen=True)
class MonitorImages:
    """A client's monitor sets as cached tensors (``uint8``, at the backbone's input side)."""

    bank: ImageTensors
    queries: ImageTensors
    statistics: ImageTensors
    num_classes: int
    in_chans: int


def monitor_images(
    task: ClientTask,
    indices: tuple[np.ndarray, np.ndarray, np.ndarray],
    side: int,
    chans: int,
    *,
    device: torch.device | str = "cpu",
    cache: str = "auto",
    share: float = 0.5,
) -> MonitorImages:
    """The sets of :func:`monitor_indices` from the process's image cache (decoded on first
    use; see :func:`fedssl.data.cache.cached_images` for ``device``, ``cache`` and ``share``)."""
    bank_idx, query_idx, bn_idx = indices

    def get(data, idx):
        return cached_images(data, idx, side, chans, device=device, mode=cache, share=share)

    return MonitorImages(
        get(task.train, bank_idx),
        get(task.test, query_idx),
        get(task.train, bn_idx),
        task.num_classes,
        chans,
    )


class Normalized:
    """``(images, labels)`` batches of cached images as the evaluation transform gives them:
    floats scaled to [0, 1] and normalised per channel (:func:`fedssl.data.transforms.normalize`),
    on the cache's device."""

    def __init__(self, images: ImageTensors, batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.images, self.batch_size = images, int(batch_size)
        norm, dev = normalize(int(images.images.shape[1])), images.images.device
        self.mean = torch.tensor(norm["mean"], device=dev).view(1, -1, 1, 1)
        self.std = torch.tensor(norm["std"], device=dev).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(len(self)):
            s = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield self.images.floats(s).sub_(self.mean).div_(self.std), self.images.labels[s]


def bn_image_count(cfg: ExperimentConfig) -> int:
    n = cfg.ssl.knn_bn_images
    if n < 0:
        raise ValueError(f"ssl.knn_bn_images must be >= 0 (0: every image), got {n}")
    return n


@dataclass(frozen=True)
class MonitorSettings:
    """What the kNN monitor reads of an experiment: the clients' data, the sizes of its three
    sets, the kNN's ``k`` and temperature, the readout's BatchNorm statistics (``client`` or
    ``merged``), the image side and channels the backbone sees, the evaluation batch size and the
    runtime section. :meth:`of` takes them from a config."""

    data: DataConfig
    bank: int
    queries: int
    bn_images: int
    k: int
    t: float
    bn: str
    image_size: int
    in_chans: int
    batch_size: int
    runtime: RuntimeConfig

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> MonitorSettings:
        """The monitor's settings of ``cfg`` (``ssl.knn_*``, ``model``, ``data``, ``runtime``).

        Raises:
            ValueError: a negative ``ssl.knn_bn_images``.
        """
        s = cfg.ssl
        return cls(
            data=cfg.data,
            bank=s.knn_bank,
            queries=s.knn_queries,
            bn_images=bn_image_count(cfg),
            k=s.knn_k,
            t=s.knn_t,
            bn=s.knn_bn,
            image_size=cfg.model.image_size,
            in_chans=model_in_chans(cfg),
            batch_size=cfg.train.eval_batch_size,
            runtime=cfg.runtime,
        )


def _indices(m: MonitorSettings, partition_id: int):
    task = client_task(m.data, partition_id)
    idx = monitor_indices(task, partition_id, m.data.seed, m.bank, m.queries, m.bn_images)
    return task, idx


def monitor_sets(m: MonitorSettings, partition_id: int, in_chans: int):
    """The kNN monitor's sets: ``(task, runtime, bank, queries)``, the bank being the client's
    labeled part (at most ``ssl.knn_bank`` images) and the queries its test split (at most
    ``ssl.knn_queries``), each a loader of evaluation-transformed ``(images, labels)`` batches
    (:func:`~fedssl.methods.monitor.monitor_indices`). Every baseline the monitor is compared
    with is scored on these same queries."""
    task, (bank_idx, query_idx, _) = _indices(m, partition_id)
    tf = eval_transform(m.image_size, in_chans)
    mode = pil_mode(in_chans)
    rt = runtime.resolve(m.runtime)

    def loader(data, idx: np.ndarray):
        return runtime.loader(rt, ImageDataset(data, idx, tf, mode), m.batch_size)

    return task, rt, loader(task.train, bank_idx), loader(task.test, query_idx)


def statistics_images(
    m: MonitorSettings, partition_id: int, in_chans: int, image_size: int | None = None
) -> DataLoader:
    """The images a client re-estimates BatchNorm statistics on (``ssl.knn_bn: client``): at
    most ``ssl.knn_bn_images`` (0: all) of its training images, drawn at random without looking
    at labels, evaluation-transformed. The loader yields ``(images, labels)``; the labels are
    never used. ``image_size``: the backbone's input side (default: the settings').
    """
    task, (_, _, idx) = _indices(m, partition_id)
    tf = eval_transform(image_size or m.image_size, in_chans)
    ds = ImageDataset(task.train, idx, tf, pil_mode(in_chans))
    return runtime.loader(runtime.resolve(m.runtime), ds, m.batch_size)


def _monitor_batches(m: MonitorSettings, partition_id: int, in_chans: int):
    """``(task, runtime, bank, queries, statistics)`` batches of the monitor: from the image
    cache (``data.cache`` not ``off``: decoded once per process) or per-image loaders."""
    if m.data.cache == "off":
        task, rt, bank, queries = monitor_sets(m, partition_id, in_chans)
        return task, rt, bank, queries, lambda: statistics_images(m, partition_id, in_chans)
    rt = runtime.resolve(m.runtime)
    task, idx = _indices(m, partition_id)
    d = m.data
    sets = monitor_images(task, idx, m.image_size, in_chans, device=rt.device,
                          cache=d.cache, share=d.cache_gpu_share)  # fmt: skip
    n = m.batch_size
    bank, queries = Normalized(sets.bank, n), Normalized(sets.queries, n)
    return task, rt, bank, queries, lambda: Normalized(sets.statistics, n)


def backbone_predictions(
    m: MonitorSettings, partition_id: int, module: SSLMethod
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The kNN monitor on this client, query by query: ``(predicted classes, labels, number of
    classes)`` of ``module``'s backbone, labeled part = bank, test = queries, with the client's
    own BatchNorm statistics (``ssl.knn_bn: client``, the default:
    :func:`~fedssl.methods.knn.with_own_statistics` on :func:`statistics_images`) or the
    weights' own (``merged``). ``module`` is never changed."""
    chans = module.backbone_in_chans
    task, rt, bank_batches, query_batches, statistics = _monitor_batches(m, partition_id, chans)
    backbone = module.backbone
    if m.bn == "client":
        backbone = with_own_statistics(backbone, statistics(), rt)
    bank, bank_y = extract_features(backbone, bank_batches, rt)
    queries, query_y = extract_features(backbone, query_batches, rt)
    pred = knn_predictions(bank, bank_y, queries, task.num_classes, m.k, m.t)
    return pred, query_y, task.num_classes


def backbone_knn(m: MonitorSettings, partition_id: int, module: SSLMethod) -> float:
    """kNN accuracy of ``module``'s backbone on this client (:func:`backbone_predictions`)."""
    pred, labels, _ = backbone_predictions(m, partition_id, module)
    return top1(pred, labels)


def pixels_predictions(
    m: MonitorSettings, partition_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The baseline a backbone's kNN must beat, query by query (as
    :func:`backbone_predictions`): the same kNN (bank, queries, k, temperature, cosine
    similarity) on the raw pixels the backbone sees, the better of pixels in [0, 1] and
    normalised pixels (so no scaling choice weakens it)."""
    chans = m.in_chans
    task, _, bank_batches, query_batches, _ = _monitor_batches(m, partition_id, chans)
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
            m.k,
            m.t,
        )
        for b, q in ((bank_n, query_n), (bank_01, query_01))
    ]
    best = max(preds, key=lambda p: top1(p, query_y))  # the first on a tie
    return best, query_y, task.num_classes


def pixels_knn(m: MonitorSettings, partition_id: int) -> float:
    """kNN accuracy on the raw pixels (:func:`pixels_predictions`): the monitor's baseline."""
    pred, labels, _ = pixels_predictions(m, partition_id)
    return top1(pred, labels)
