"""Typed experiment configs: YAML files in ``configs/`` loaded into dataclasses, with dotted
command-line overrides (``train.lr=0.05``), validated in one place.

Unknown keys, wrong types and values outside a field's domain (declared beside the field:
:mod:`fedssl.domains`) or its choices raise ``ConfigError`` naming the dotted key, the value and
what is allowed. The resolved config is saved beside every run
(:func:`save_config`), so any run can be reproduced from its directory.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from fedssl.domains import (
    Checked,
    Count,
    Fraction,
    Momentum,
    NonNegative,
    Positive,
    Probability,
    Range,
    Rate,
    Seed,
    Size,
    Text,
    domain_of,
)
from fedssl.privacy import PrivacyError, check_privacy

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "FederationConfig",
    "TrackingConfig",
    "SSLConfig",
    "FinetuneConfig",
    "RuntimeConfig",
    "DPSGDConfig",
    "CentralDPConfig",
    "SecAggConfig",
    "PrivacyConfig",
    "ExperimentConfig",
    "load_config",
    "read_config",
    "round_lr",
    "from_dict",
    "check_domains",
    "to_dict",
    "apply_overrides",
    "save_config",
]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


#: ``ssl.method``: one file each in ``fedssl/methods/ssl/``
SSL_METHODS = ("simclr", "byol", "simsiam", "moco", "vicreg", "barlowtwins", "dino")
#: ``federation.server_opt``: Flower's FedOpt family over the merge (``none``: the merge itself)
SERVER_OPTIMIZERS = ("none", "adam", "yogi", "adagrad")


@dataclass
class DataConfig:
    """Which dataset, and how it is split over clients."""

    name: str = "fashion_mnist"
    # explicit data folder; else $FEDSSL_DATA, system paths, download
    root: Annotated[str, Text()] | None = None
    partition: str = "iid"  # iid | label_split | dominant_label | dirichlet
    num_clients: Count = 2
    train_per_client: Count = 30000
    test_per_client: Count = 5000
    # "test": a client's local accuracy is measured on its share of the test set (the papers);
    # "holdout": on `holdout_per_client` examples carved from its training data (test unseen).
    local_val: str = "test"
    holdout_per_client: Count = 5000
    dominant_p: Probability = 0.55
    dirichlet_alpha: Rate = 0.5
    seed: Seed = 0
    # Multi-task setting (stage one / two, paper 003): one dataset per client, e.g.
    # [fashion_mnist, mnist]; when set, `name` and `partition` are not used.
    clients: list[str] = field(default_factory=list)
    roots: dict[str, str] = field(default_factory=dict)  # per-dataset folder, e.g. intel_scene
    # each client's labeled part (stratified); the rest unlabeled
    labeled_fraction: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] = 0.25
    max_per_client: Size = 0  # cap on a client's training images (0: all), sampled stratified
    # Each client's images decoded once per process into uint8 tensors (fedssl.data.cache):
    # auto (on the GPU when they fit cache_gpu_share of its free memory, else host memory),
    # device, host, or off (PIL and a DataLoader per batch). Stage one's batched views and the
    # kNN monitor read them.
    cache: str = "auto"
    cache_gpu_share: Fraction = 0.5  # auto: the most of the GPU's free memory the images may take
    # Side of the cached training images of datasets decoded from files (JPEGs), as a multiple
    # of model.image_size (>= 1): batched views crop from the larger image (1.15: 258 px at 224).
    cache_side: Annotated[float, Range(1, 4)] = 1.0

    _choices = {
        "partition": ("iid", "label_split", "dominant_label", "dirichlet"),
        "local_val": ("test", "holdout"),
        "name": ("fashion_mnist", "mnist"),
        "cache": ("auto", "device", "host", "off"),
    }


@dataclass
class ModelConfig:
    """The network every client trains (same architecture and initial weights everywhere)."""

    name: str = "paper_cnn"
    width: Count = 32  # channels of the first conv; the second has twice as many
    hidden: Count = 128
    batchnorm: bool = False
    padding: bool = False  # "same" padding in the convolutions
    dropout: Annotated[float, Range(0, 1, hi_open=True)] = 0.0
    depth: Count = 1  # paper_cnn: convolutions per conv+pool block (1: the papers' reading)

    # SSL (experiment: pretrain) and task heads: a timm backbone, or a small-image ResNet
    # sresnet<10|18|34>_w<width> (stem keeps 28-32 px; fedssl.models.backbones).
    backbone: Annotated[str, Checked("fedssl.models.backbones")] = "resnet18"
    small_input: bool = False  # ResNet stem for 28-32 px images (3x3 stride 1, no max-pool)
    image_size: Annotated[int, Range(8, 4096)] = 28  # views and evaluation images are this size
    # image channels; 0: from the clients' data (1 for MNIST-like)
    in_chans: Annotated[int, Range(0, 4)] = 0
    # SSL head widths; null: the method's recipe (fedssl.methods.ssl.<method>)
    proj_hidden: Count | None = None
    proj_out: Count | None = None
    # simclr: projection head layers (2, or SimCLR v2's 3)
    proj_layers: Annotated[int, Range(lo=2)] | None = None
    pred_hidden: Count | None = None  # prediction head (byol, simsiam)

    _choices = {"name": ("paper_cnn", "mlp")}


@dataclass
class SSLConfig:
    """The SSL method, what of it travels, the client-side FedSSL update, its views and the kNN
    monitor (experiment: pretrain). Method settings left null take the method's recipe (the
    keyword defaults of its class in ``fedssl/methods/ssl/<method>.py``); setting one the method
    does not have is an error."""

    method: str = "simclr"  # simclr | byol | simsiam | moco | vicreg | barlowtwins | dino
    # Parts merged by the server (backbone, projection_head, prediction_head, target); the
    # rest stays on the client. Empty: the method's default (e.g. byol: all but the target).
    travel: list[str] = field(default_factory=list)
    # Client-side update of what it receives: none (take the merge), fedema (Zhuang et al.
    # ICLR 2022: online = mu * local + (1 - mu) * global, mu = min(lambda * divergence, 1)),
    # fedu (Zhuang et al. ICCV 2021: the global predictor only below a divergence threshold).
    client_update: str = "none"
    # Backbone layers that never leave a client, each client training its own (personalised
    # layers): ``batchnorm`` (every BatchNorm layer: FedBN, Li et al. ICLR 2021) and/or module
    # names of the backbone, e.g. ``layer4`` (the last stage, as FedPer keeps the top layers).
    # The kNN monitor scores each client's own backbone (shared layers + its local ones).
    local_layers: list[str] = field(default_factory=list)
    fedema_tau: Rate = 0.7  # FedEMA: lambda = tau / (divergence of the first local training)
    fedema_lambda: NonNegative = 0.0  # FedEMA: a fixed lambda instead (0: calibrate from tau)
    fedu_threshold: NonNegative = 0.4  # FedU: divergence below which the global predictor is taken
    temperature: Rate | None = None  # simclr, moco
    target_momentum: Probability | None = None  # byol, moco, dino: EMA of the target per step
    queue_size: Count | None = None  # moco
    prototypes: Count | None = None  # dino: output width
    teacher_temperature: Rate | None = None  # dino
    head_batch_norm: bool | None = None  # dino: BatchNorm in the projection head's hidden layers
    local_views: Size | None = None  # dino: small crops per image
    redundancy_weight: NonNegative | None = None  # barlowtwins: off-diagonal weight
    min_scale: Fraction = 0.08  # RandomResizedCrop lower bound
    cj_prob: Probability = 0.8
    cj_strength: NonNegative = 0.5
    hf_prob: Probability = 0.5
    rr_prob: Probability = 0.0  # random rotation probability (0: off)
    rr_degrees: Annotated[float, Range(0, 180)] = 0.0  # rotation range +-degrees when rr_prob > 0
    # elastic distortion (Simard et al. 2003: a random displacement field, Gaussian-smoothed by
    # elastic_sigma px, scaled by elastic_alpha px) with this probability; ssl.views=batched only
    elastic_prob: Probability = 0.0
    elastic_alpha: NonNegative = 34.0
    elastic_sigma: Rate = 4.0
    # the crops' aspect ratios are drawn log-uniformly from [1 / crop_ratio, crop_ratio]
    # (torchvision's 3/4-4/3 by default; 1: every crop keeps the image's aspect);
    # another value needs ssl.views=batched (lightly's crops have torchvision's range)
    crop_ratio: Annotated[float, Range(lo=1)] = 4 / 3
    # Views of one client that differ from the settings above, by the client's dataset name:
    # e.g. {mnist: {rr_prob: 0.0}} (keys: min_scale, cj_prob, cj_strength, hf_prob, rr_prob,
    # rr_degrees, elastic_*, crop_ratio). Each client trains on its own views; the server never
    # sees them.
    client_views: dict[str, dict[str, float]] = field(default_factory=dict)
    # Where views are made: ``batched`` (tensor operations on the whole batch on the training
    # device: fedssl.methods.ssl.batch_views; no CPU bottleneck in front of a GPU), ``lightly``
    # (its PIL transforms, per image in the loader's workers), or ``auto``: batched wherever the
    # method's views can be batched (every method but DINO's multi-crop), else lightly
    views: str = "auto"
    knn_k: Count = 200
    knn_t: Rate = 0.1
    knn_bank: Size = 0  # max labeled images per client in the kNN bank (0: all labeled)
    knn_queries: Size = 1000  # max test images per client scored by kNN (0: all)
    # The BatchNorm statistics a client scores the backbone with: ``client`` re-estimates them
    # on its own training images (knn_bn_images of them at random, 0: all; labels unused, test
    # split never) before extracting features, ``merged`` keeps the weights' own (FedAvg's
    # average of every client's).
    knn_bn: str = "client"
    knn_bn_images: Size = 1000

    _choices = {
        "method": SSL_METHODS,
        "client_update": ("none", "fedema", "fedu"),
        "knn_bn": ("client", "merged"),
        "views": ("auto", "batched", "lightly"),
    }


@dataclass
class TrainConfig:
    """Local training on each client (one Lightning ``Trainer.fit`` per round)."""

    optimizer: str = "sgd"
    lr: Rate = 0.05
    lr_decay: Rate = 1.0  # learning rate of round r is lr * lr_decay ** (r - 1)
    momentum: Momentum = 0.9
    weight_decay: NonNegative = 0.0
    batch_size: Count = 64
    local_epochs: Count = 1
    local_steps: Size = 0  # > 0: this many mini-batches per round instead of local_epochs
    # Softmax over the client's own labels only (helps label-skewed clients, H-environment).
    restrict_labels: bool = False
    augment: str = "none"  # none | flip | flip_shift (random flip + shift up to 2 px)
    threads: Count = 1  # torch threads per client process
    eval_batch_size: Count = 1000

    lr_schedule: str = "exp"  # exp: lr * lr_decay ** (r - 1); cosine: over the rounds
    prox_mu: NonNegative = 0.0  # FedProx: proximal term mu/2 ||w - w_global||^2 (0: off)

    _choices = {
        "optimizer": ("sgd", "adam", "adamw"),
        "augment": ("none", "flip", "flip_shift"),
        "lr_schedule": ("exp", "cosine"),
    }

    def fit_limits(self) -> dict[str, int]:
        """A round's local work as Lightning ``Trainer`` limits: ``local_steps`` mini-batches
        when set, else ``local_epochs`` epochs."""
        if self.local_steps > 0:
            return {"max_steps": self.local_steps, "max_epochs": -1}
        return {"max_epochs": self.local_epochs}


@dataclass
class FederationConfig:
    """Rounds, merge method and sampling."""

    rounds: Count = 3
    method: Annotated[str, Checked("fedssl.aggregation.resolve_method")] = "avg"
    weighted: bool = True  # weight avg by examples per client (FedAvg)
    fraction_train: Fraction = 1.0
    min_clients: Count = 2  # clients sampled / required to start a round
    # A round merges when at least this many clients replied usable weights; clients that raise,
    # time out (timeout_s) or send NaN/inf are left out and logged (capped at the number asked
    # that round). 0: federation.min_clients.
    min_replies: Size = 1
    cpus_per_client: Positive = 1.0
    # GPUs per simulated client, a Ray resource: 0.5 = two clients share one GPU; 0: clients see
    # no GPU. null (auto): 0 where the runtime resolves to CPU, else the machine's GPUs shared
    # evenly by the clients (all clients train at once).
    gpus_per_client: NonNegative | None = None
    # Stop the run (non-zero exit) after this many consecutive rounds without enough usable
    # replies to merge; the message names the clients' errors. 0: never stop.
    max_failed_rounds: Size = 3
    eval_every: Count = 1  # evaluate the merged model every k rounds (and always the last)
    # FedAvgM: the merged update goes through server momentum (0: plain merge) and a server
    # learning rate (1: take the merge). See docs/results/merge.md for when it pays off.
    server_momentum: Momentum = 0.0
    server_lr: Rate = 1.0
    # Flower's FedOpt server optimizers over the merge: none | adam | yogi | adagrad, with
    # Flower's parameters (eta, beta_1, beta_2, tau), e.g. server_opt_args: {eta: 0.01}
    server_opt: str = "none"
    server_opt_args: dict[str, float] = field(default_factory=dict)
    timeout_s: Positive = 3600.0

    _choices = {"server_opt": SERVER_OPTIMIZERS}


@dataclass
class FinetuneConfig:
    """Stage two (paper 003): a client's task head on the shared backbone (experiment: finetune).

    ``backbone`` is a stage-one run directory or a ``backbone.safetensors`` file; empty: the most
    recent run under ``out_dir`` holding one; ``none``: a randomly initialised backbone of
    ``model.*`` (the paper's supervised "CL" baseline, normally with ``mode: full``);
    ``pixels``: no backbone, the linear head on the raw pixels (the baseline a learned
    representation must beat; ``mode: linear``).
    """

    backbone: Annotated[str, Text()] = ""
    mode: str = "linear"  # linear: backbone frozen; partial: its last stage trains; full
    epochs: Count = 30  # local epochs (federated: per round, see local_epochs)
    local_epochs: Count = 1  # federated fine-tuning: epochs per round
    optimizer: str = "sgd"
    lr: Rate = 0.1
    backbone_lr_scale: NonNegative = 1.0  # the backbone's learning rate is lr times this
    momentum: Momentum = 0.9
    weight_decay: NonNegative = 0.0
    batch_size: Count = 128
    labels_per_class: Size = 0  # > 0: use only this many labeled images per class (label-scarce)
    augment: str = "crop"  # none | crop | crop_flip (partial/full modes; linear uses none)
    eval_max: Size = 0  # cap on images scored per evaluation set (0: all)
    # BatchNorm statistics of a pretrained backbone's frozen parts (linear, partial): merged
    # keeps the file's (every client's mean); client re-estimates them on the client's own
    # training images first (ssl.knn_bn_images of them, labels unused; the head file keeps
    # them). Measured on the label-scarce protocol, client did not help linear heads (mean
    # -0.5 points: docs/finetune.md), so merged stays the default.
    bn: str = "merged"

    _choices = {
        "bn": ("client", "merged"),
        "mode": ("linear", "partial", "full"),
        "optimizer": ("sgd", "adam", "adamw"),
        "augment": ("none", "crop", "crop_flip"),
    }


@dataclass
class RuntimeConfig:
    """Hardware and numerics of every fit and evaluation; :mod:`fedssl.runtime` resolves it on
    the machine that runs the fit. ``null`` (or ``auto``) lets that machine decide."""

    accelerator: str = "auto"  # auto (a GPU where one is visible, else the CPU) | cpu | gpu
    devices: Count = 1  # GPUs one fit uses (one process per fit: 1)
    # auto (bf16-mixed on a GPU with bfloat16, else 32-true) | 32-true | bf16-mixed | 16-mixed
    precision: str = "auto"
    channels_last: bool | None = None  # NHWC weights for convolutions; auto: on
    workers: Size = 0  # DataLoader worker processes (0: in the training process)
    pin_memory: bool | None = None  # page-locked batches; auto: on for GPUs
    persistent_workers: bool = True  # keep loader workers across epochs (workers > 0)
    matmul_precision: str = "auto"  # float32 matmuls: auto (high on GPUs) | highest | high | medium
    cudnn_benchmark: bool | None = None  # cuDNN autotuning; auto: on for GPUs unless deterministic
    deterministic: bool = False  # deterministic kernels (slower; Lightning's deterministic=True)

    _choices = {
        "accelerator": ("auto", "cpu", "gpu"),
        "precision": ("auto", "32-true", "bf16-mixed", "16-mixed"),
        "matmul_precision": ("auto", "highest", "high", "medium"),
    }


@dataclass
class TrackingConfig:
    """Weights & Biases; ``auto`` = online with credentials, else offline."""

    wandb: str = "auto"
    project: Annotated[str, Text(nonempty=True)] = "fedssl"

    _choices = {"wandb": ("auto", "online", "offline", "disabled")}


@dataclass
class DPSGDConfig:
    """Record-level differential privacy on each client: DP-SGD (Opacus: per-sample gradient
    clipping, Gaussian noise, Poisson-sampled batches) for supervised runs and stage-two heads.
    On when ``epsilon`` or ``noise_multiplier`` is set; ε is per client, over the whole run."""

    # the privacy budget per client over the whole run; the noise is derived from it
    epsilon: Rate | None = None
    # instead of epsilon: the noise (std over max_grad_norm); the ε spent is then reported
    noise_multiplier: NonNegative | None = None
    delta: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] = 1e-5
    max_grad_norm: Rate = 1.0  # every example's gradient is clipped to this L2 norm
    # null: noise and batch sampling from the OS's secure source; a number makes them
    # reproducible (tests only: anyone who knows it can subtract the noise)
    noise_seed: Seed | None = None

    @property
    def enabled(self) -> bool:
        """Whether the clients train with DP-SGD."""
        return self.epsilon is not None or self.noise_multiplier is not None


@dataclass
class CentralDPConfig:
    """Client-level differential privacy of the federation (DP-FedAvg): each client's update
    clipped to ``clipping_norm`` (by the server, or by the client before it leaves), Gaussian
    noise of std ``noise_multiplier * clipping_norm / n`` added to the mean of the ``n``
    sampled clients. On when ``noise_multiplier`` is set."""

    noise_multiplier: NonNegative | None = None  # σ (null: off; 0: clipping only, no privacy)
    clipping_norm: Rate = 1.0  # the largest L2 norm of one client's update
    clipping: str = "server"  # server | client: where an update is clipped
    delta: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] = 1e-5
    # null: fresh noise from the OS; a number: reproducible noise (tests only: anyone who
    # knows it can subtract the noise, so the run claims no privacy against them)
    noise_seed: Seed | None = None
    # adaptive clipping (Andrew et al. 2019): the clipping norm follows a quantile of the norms
    adaptive: bool = False
    target_quantile: Probability = 0.5  # the share of updates the norm should leave unclipped
    clip_lr: Rate = 0.2  # geometric step of the norm per round
    # std of the noise on the count of unclipped updates (null: clients / 20, as in the paper)
    clipped_count_stddev: Rate | None = None

    _choices = {"clipping": ("server", "client")}

    @property
    def enabled(self) -> bool:
        """Whether the merged update gets clipping and noise."""
        return self.noise_multiplier is not None


@dataclass
class SecAggConfig:
    """Secure aggregation (Flower's SecAgg+): the server learns only the mean of a round's
    updates. Needs at least three clients per round, federation.method avg, unweighted."""

    enabled: bool = False
    # shares of each client's key = its masking neighbours + 1 (null: ceil(log2 n) + 1, >= 3)
    num_shares: Annotated[int, Range(lo=3)] | None = None
    # shares that rebuild a dropped client's mask (null: a majority of num_shares)
    reconstruction_threshold: Annotated[int, Range(lo=2)] | None = None
    # update elements are clipped to +-this before quantisation (null: privacy.central's
    # clipping_norm with client-side clipping, else 8)
    clipping_range: Rate | None = None
    quantization_range: Annotated[int, Range(2, 2**30)] = 2**22  # levels over the range


@dataclass
class PrivacyConfig:
    """Privacy (:mod:`fedssl.privacy`): differential privacy record-level on the clients
    (``dp_sgd``) and client-level on the server (``central``), and secure aggregation
    (``secagg``); any of them together."""

    dp_sgd: DPSGDConfig = field(default_factory=DPSGDConfig)
    central: CentralDPConfig = field(default_factory=CentralDPConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)


@dataclass
class ExperimentConfig:
    """A whole run: data, model, local training, federation, tracking and the run directory."""

    name: Annotated[str, Text(nonempty=True)] = "merge"
    experiment: str = "supervised"
    out_dir: Annotated[str, Text(nonempty=True)] = "runs"
    seed: Seed = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    _choices = {"experiment": ("supervised", "pretrain", "finetune")}

    def run_dir(self) -> Path:
        """The run directory ``<out_dir>/<name>``."""
        return Path(self.out_dir) / self.name


def round_lr(cfg: ExperimentConfig, server_round: int, base: float | None = None) -> float:
    """Learning rate of a round (``train.lr_schedule``): ``exp`` (``base * lr_decay ** (r - 1)``)
    or ``cosine`` from ``base`` at round 1 towards 0 over ``federation.rounds``. ``base``
    defaults to ``train.lr`` (federated fine-tuning passes ``finetune.lr``)."""
    t, rounds = cfg.train, max(1, cfg.federation.rounds)
    lr = t.lr if base is None else base
    if t.lr_schedule == "cosine":
        return lr * cosine(server_round - 1, rounds)
    return lr * t.lr_decay ** max(0, server_round - 1)


def cosine(step: int, total: int) -> float:
    """The cosine factor from 1 at ``step`` 0 to 0 at ``total`` (held at 0 after): the one
    cosine schedule (over rounds in :func:`round_lr`, over steps within a stage-two fit)."""
    total = max(1, total)
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or str(value).lower() == "auto"):
            return None  # ``auto`` (or null): decided where the value is used
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {tp}")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in (x.strip() for x in value.split(",")) if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float):
        return _number(value, tp, key)
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _number(value: Any, tp: type, key: str) -> int | float:
    """``value`` as ``tp`` (int or float): a number of that kind, a float with an integer value
    for an int, or a string that parses as one."""
    if isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if tp is float or isinstance(value, int) or value.is_integer():
            return tp(value)
    raise ConfigError(f"{key}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")


#: Keys that moved, old dotted name -> new: configs saved by earlier runs still load.
MOVED_KEYS = {"train.workers": "runtime.workers"}
#: Experiment kinds that were renamed, old -> new: the old name still loads, with a warning.
#: (``merge`` meant supervised federated training and clashed with ``aggregation.merge``,
#: ``launch/merge.py`` and the hub's Merge.)
RENAMED_EXPERIMENTS = {"merge": "supervised"}


def _move_legacy_keys(data: dict[str, Any]) -> dict[str, Any]:
    out = _deepcopy(data)
    old = out.get("experiment")
    if isinstance(old, str) and old in RENAMED_EXPERIMENTS:
        new = RENAMED_EXPERIMENTS[old]
        warnings.warn(
            f"experiment: {old!r} is deprecated; it is now called {new!r} (same behaviour)",
            FutureWarning,
            stacklevel=3,
        )
        out["experiment"] = new
    for old, new in MOVED_KEYS.items():
        (osec, okey), (nsec, nkey) = old.split("."), new.split(".")
        section = out.get(osec)
        if isinstance(section, dict) and okey in section:
            value = section.pop(okey)
            target = out.setdefault(nsec, {})
            if isinstance(target, dict):
                target.setdefault(nkey, value)
    return out


def from_dict(cls, data: dict[str, Any] | None, prefix: str = "", relations: bool = True):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and bad values;
    ``relations=False`` leaves out the checks across sections (:func:`fedssl.privacy.
    check_privacy`), for a config that is completed before it is used."""
    data = dict(data or {})
    if cls is ExperimentConfig and not prefix:
        data = _move_legacy_keys(data)
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            allowed = ", ".join(f"{prefix}{k}" for k in fields)
            raise ConfigError(f"unknown config key {dotted!r}; allowed: {allowed}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a mapping, got {value!r}")
            kwargs[key] = from_dict(tp, value, prefix=f"{dotted}.")
        else:
            allowed = getattr(cls, "_choices", {}).get(key, ())
            if isinstance(value, bool) and "off" in allowed and "on" not in allowed:
                value = "off" if not value else value  # YAML 1.1 reads a bare off as false
            kwargs[key] = _coerce(value, tp, dotted)
    obj = cls(**kwargs)
    choices = getattr(cls, "_choices", {})
    for key, allowed in choices.items():
        if getattr(obj, key) not in allowed:
            raise ConfigError(
                f"{prefix}{key}: {getattr(obj, key)!r} is not allowed; "
                f"choose one of {', '.join(allowed)}"
            )
    check_domains(obj, prefix)
    if cls is ExperimentConfig and not prefix and relations:
        try:
            check_privacy(obj)
        except PrivacyError as err:
            raise ConfigError(str(err)) from None
    return obj


def check_domains(obj, prefix: str = "") -> None:
    """Check every field of config dataclass ``obj`` against the domain declared beside it
    (:mod:`fedssl.domains`); sections are checked by their own :func:`from_dict`.

    Raises:
        ConfigError: ``<key>: <value> is not allowed; it must be <domain>``.
    """
    extras = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        dom, value = domain_of(extras[f.name]), getattr(obj, f.name)
        if value is None or dom is None:
            continue
        if isinstance(dom, Range) and not dom.allows(float(value)):
            raise ConfigError(
                f"{prefix}{f.name}: {value!r} is not allowed; it must be {dom.describe()}"
            )
        if isinstance(dom, Text) and dom.nonempty and not str(value).strip():
            raise ConfigError(f"{prefix}{f.name}: must not be empty")


def to_dict(cfg) -> dict[str, Any]:
    """Nested plain dict of a config dataclass (for YAML, W&B and manifests)."""
    return dataclasses.asdict(cfg)


def config_diff(a, b, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every leaf where two configs differ.

    ``ignore`` names keys or whole sections (``"tracking"``, ``"out_dir"``) left out.
    """

    def kept(d) -> dict[str, Any]:
        flat = _leaves(d if isinstance(d, dict) else to_dict(d))
        return {
            k: v
            for k, v in flat.items()
            if not any(k == i or k.startswith(i + ".") for i in ignore)
        }

    la, lb = kept(a), kept(b)
    keys = sorted(la.keys() | lb.keys())
    return [(k, la.get(k), lb.get(k)) for k in keys if la.get(k) != lb.get(k)]


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML scalars) to a nested dict."""
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for ov in overrides:
            if "=" not in ov:
                raise ConfigError(f"override {ov!r} must look like key.sub=value")
            k, v = ov.split("=", 1)
            parsed.append((k.strip(), yaml.safe_load(v) if v.strip() else None))
        items = parsed
    out = _deepcopy(data)
    for dotted, value in items:
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def _deepcopy(d):
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{dotted key: value}`` of a nested mapping; an empty mapping is a value (it replaces)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_config(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping a YAML config file holds, with its ``base`` resolved.

    A file may start from another: ``base: personal.yaml`` (a path relative to the file's own
    folder) takes that file's settings and sets this file's on top, key by key, as ``--set``
    would: ``ssl: {method: vicreg}`` changes the method and keeps the base's other ``ssl``
    settings; a list or an empty mapping replaces the base's value. Bases may have bases.

    Raises:
        ConfigError: a missing or non-mapping file, a ``base`` that is not a file name or does
            not exist, or a chain of bases that loops.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    loaded = yaml.safe_load(p.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    if "base" not in loaded:
        return loaded
    base = loaded.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{p}: base must name a YAML config file, got {base!r}")
    bp = p.parent / base
    chain = (*_chain, p.resolve())
    if bp.resolve() in chain:
        names = " -> ".join(str(c.name) for c in (*chain, bp))
        raise ConfigError(f"{p}: its bases loop ({names})")
    if not bp.is_file():
        raise ConfigError(f"{p}: its base {base!r} does not exist (looked for {bp})")
    return apply_overrides(read_config(bp, chain), _leaves(loaded))


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    cls=ExperimentConfig,
    relations: bool = True,
):
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides.

    Args:
        path: YAML file; its keys mirror the dataclass fields (``base: FILE`` starts from
            another file: :func:`read_config`).
        overrides: ``["train.lr=0.1", ...]`` or ``{"train.lr": 0.1}``.
        cls: the top-level config dataclass.
        relations: check the settings across sections too (see :func:`from_dict`).

    Raises:
        ConfigError: for a missing file, unknown key or invalid value (the message names it).
    """
    data: dict[str, Any] = read_config(path) if path is not None else {}
    if overrides:
        data = apply_overrides(data, overrides)
    return from_dict(cls, data, relations=relations)


def save_config(cfg, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically: temporary file + rename); returns the
    path."""
    import os

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, p)
    return p
