"""The one place that decides hardware and numerics: devices, precision, memory layout, data
loading and process-wide settings, from the ``runtime`` config section.

Every fit builds its Lightning ``Trainer`` with :func:`trainer`, every DataLoader comes from
:func:`loader`, and every evaluation runs its batches through :func:`predict` (inputs moved to
the module's device, autocast when the precision says so, outputs back as float32 on the CPU).
Nothing else in fedssl constructs a ``pl.Trainer`` or picks a device.

``auto`` settings are resolved on the machine that runs the fit (:class:`Machine`): a CPU-only
machine trains in float32 on the CPU, a GPU machine on its GPU in bf16-mixed (where the GPU has
bf16) with channels-last convolutions, pinned memory, cuDNN autotuning and TF32 matmuls.

This module imports nothing from fedssl above :mod:`fedssl.config`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedssl.config import ConfigError, ExperimentConfig, RuntimeConfig

__all__ = [
    "Machine",
    "Runtime",
    "usable_cpus",
    "resolve",
    "trainer",
    "trainer_kwargs",
    "loader",
    "layout",
    "predict",
    "module_device",
    "client_resources",
    "round_seed",
    "seed_everything",
]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: containers and ``taskset`` shrink it
    below ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Machine:
    """What a machine offers: usable CPUs, CUDA GPUs and whether they compute in bf16."""

    cpus: int
    gpus: int = 0
    gpu_name: str = ""
    bf16: bool = False

    @classmethod
    def probe(cls) -> Machine:
        """This machine as this process sees it (looked up once per process: the GPUs a
        process may use do not change while it runs; without a GPU CUDA is not initialised)."""
        return _probe()

    def describe(self) -> str:
        """One line: CPUs and GPUs."""
        gpu = f"{self.gpus} x {self.gpu_name}" if self.gpus else "no GPU"
        return f"{self.cpus} usable CPUs, {gpu}"


@dataclass(frozen=True)
class Runtime:
    """Resolved runtime settings of one process (see :func:`resolve`)."""

    accelerator: str  # "cpu" | "gpu"
    precision: str  # "32-true" | "bf16-mixed" | "16-mixed"
    channels_last: bool
    workers: int
    pin_memory: bool
    persistent_workers: bool
    matmul_precision: str | None  # None: leave torch's setting alone
    cudnn_benchmark: bool
    deterministic: bool
    device_index: int = 0  # the GPU of this process (accelerator gpu)

    @property
    def device(self) -> torch.device:
        """The torch device fits and evaluations run on."""
        return (
            torch.device("cuda", self.device_index)
            if self.accelerator == "gpu"
            else (torch.device("cpu"))
        )

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of a mixed precision (None for full precision)."""
        return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.precision)

    def autocast(self):
        """Autocast for inference under this precision (a no-op for ``32-true``)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def summary(self) -> str:
        """One line for logs and ``--print-config``."""
        where = f"gpu:{self.device_index}" if self.accelerator == "gpu" else "cpu"
        return (
            f"{where}, {self.precision}, channels_last={self.channels_last}, "
            f"workers={self.workers}, pin_memory={self.pin_memory}, "
            f"matmul_precision={self.matmul_precision or 'default'}, "
            f"cudnn_benchmark={self.cudnn_benchmark}, deterministic={self.deterministic}"
        )


@functools.cache
def _probe() -> Machine:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Machine(
        cpus=usable_cpus(),
        gpus=gpus,
        gpu_name=torch.cuda.get_device_name(0) if gpus else "",
        bf16=bool(gpus) and torch.cuda.is_bf16_supported(),
    )


def _section(cfg: ExperimentConfig | RuntimeConfig) -> RuntimeConfig:
    return cfg.runtime if isinstance(cfg, ExperimentConfig) else cfg


def resolve(
    cfg: ExperimentConfig | RuntimeConfig,
    machine: Machine | None = None,
    device_index: int = 0,
) -> Runtime:
    """Resolve ``auto`` settings on ``machine`` (default: this one) and check what it can do.

    Args:
        cfg: an experiment config or its ``runtime`` section.
        machine: the machine to resolve for (tests pass a described one).
        device_index: which GPU this process uses (``launch/compare.py --jobs`` hands them out
            round-robin); taken modulo the GPUs there are.

    Raises:
        ConfigError: a GPU asked for where none is visible, a precision the device cannot do,
            more devices than the machine has, or workers beyond its CPUs. The message names
            the key and what to set instead.
    """
    r = _section(cfg)
    m = machine or Machine.probe()
    if r.accelerator == "gpu" and m.gpus == 0:
        raise ConfigError(
            "runtime.accelerator: gpu, but no CUDA GPU is visible on this machine; use "
            "runtime.accelerator=auto (or cpu) with runtime.precision=32-true to run on the CPU"
        )
    accelerator = "gpu" if r.accelerator == "gpu" or (r.accelerator == "auto" and m.gpus) else "cpu"
    if r.devices != 1:
        raise ConfigError(
            f"runtime.devices: {r.devices}; one fit uses one device (each client one process). "
            "To use several GPUs, give clients shares of them (federation.gpus_per_client) or "
            "run heads side by side (launch/compare.py --jobs)"
        )
    precision = r.precision
    if precision == "auto":
        precision = "bf16-mixed" if accelerator == "gpu" and m.bf16 else "32-true"
    if precision == "16-mixed" and accelerator == "cpu":
        raise ConfigError(
            "runtime.precision: 16-mixed needs a GPU (CPUs have no float16 autocast); use "
            "bf16-mixed or 32-true on the CPU"
        )
    if precision == "bf16-mixed" and accelerator == "gpu" and not m.bf16:
        raise ConfigError(
            f"runtime.precision: bf16-mixed, but {m.gpu_name or 'this GPU'} has no bfloat16; "
            "use 16-mixed or 32-true"
        )
    if r.workers < 0:
        raise ConfigError(f"runtime.workers must be >= 0, got {r.workers}")
    if r.workers > m.cpus:
        raise ConfigError(
            f"runtime.workers: {r.workers} loader processes on a machine with {m.cpus} usable "
            f"CPUs; set runtime.workers to at most {max(0, m.cpus - 1)}"
        )
    on_gpu = accelerator == "gpu"
    return Runtime(
        accelerator=accelerator,
        precision=precision,
        channels_last=True if r.channels_last is None else r.channels_last,
        workers=r.workers,
        pin_memory=on_gpu if r.pin_memory is None else r.pin_memory and on_gpu,
        persistent_workers=r.persistent_workers and r.workers > 0,
        matmul_precision=(
            ("high" if on_gpu else None) if r.matmul_precision == "auto" else r.matmul_precision
        ),
        cudnn_benchmark=(
            (on_gpu and not r.deterministic) if r.cudnn_benchmark is None else r.cudnn_benchmark
        ),
        deterministic=r.deterministic,
        device_index=device_index % m.gpus if on_gpu else 0,
    )


def _apply_process_settings(rt: Runtime) -> None:
    if rt.matmul_precision is not None:
        torch.set_float32_matmul_precision(rt.matmul_precision)
    if rt.accelerator == "gpu":
        torch.backends.cudnn.benchmark = rt.cudnn_benchmark


def trainer_kwargs(rt: Runtime, callbacks: list | None = None, **limits) -> dict:
    """The arguments :func:`trainer` gives Lightning's ``Trainer`` (see there)."""
    return dict(
        accelerator=rt.accelerator,
        devices=[rt.device_index] if rt.accelerator == "gpu" else 1,
        precision=rt.precision,
        deterministic=rt.deterministic,
        benchmark=rt.cudnn_benchmark if rt.accelerator == "gpu" else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
        **limits,
    )


def trainer(rt: Runtime, callbacks: list | None = None, **limits):
    """A Lightning ``Trainer`` on ``rt``'s device and precision, without loggers, checkpoints
    or progress bars (fedssl logs itself); applies ``rt``'s process-wide settings (float32
    matmul precision, cuDNN autotuning) first.

    Args:
        rt: the resolved runtime.
        callbacks: Lightning callbacks.
        **limits: ``max_epochs`` / ``max_steps``.
    """
    import pytorch_lightning as pl

    _apply_process_settings(rt)
    return pl.Trainer(**trainer_kwargs(rt, callbacks, **limits))


def loader(
    rt: Runtime | None,
    dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int | None = None,
    workers: bool = True,
) -> DataLoader:
    """A DataLoader with ``rt``'s workers and pinned memory.

    Args:
        rt: the resolved runtime (None: in-process, unpinned).
        dataset: any map-style dataset.
        batch_size: examples per batch.
        shuffle: reshuffle every epoch (with a generator seeded by ``seed``).
        drop_last: drop the last partial batch.
        seed: seeds the shuffling and, with workers, each worker's RNGs.
        workers: False keeps loading in this process (in-memory tensors need no workers).
    """
    n = rt.workers if rt is not None and workers else 0
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        generator=gen,
        num_workers=n,
        pin_memory=bool(rt is not None and rt.pin_memory),
        persistent_workers=bool(n and rt.persistent_workers),
    )


def _is_channels_last(module: nn.Module) -> bool:
    for p in module.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


@contextmanager
def layout(module: nn.Module, rt: Runtime | None) -> Iterator[nn.Module]:
    """Convolution weights in channels-last inside the block when ``rt`` says so (faster
    convolutions on GPUs, and on CPUs: ``python benchmarks/train_step.py``), then back to the
    usual layout, so state dicts stay contiguous (safetensors, Flower records). A module that
    is channels-last already (an evaluation inside a fit) is left as it is."""
    if rt is None or not rt.channels_last or _is_channels_last(module):
        yield module
        return
    module.to(memory_format=torch.channels_last)
    try:
        yield module
    finally:
        module.to(memory_format=torch.contiguous_format)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for an empty module)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.preserve_format
    return x.to(device, non_blocking=True, memory_format=fmt)


@torch.no_grad()
def predict(
    module: nn.Module,
    batches: Iterable,
    rt: Runtime | None = None,
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and labels of every ``(x, y)`` batch, in eval mode.

    Inputs go to the module's device (``rt``'s device when given: the module is moved there
    for the call and back afterwards), under ``rt``'s autocast and layout; outputs come back as
    float32 on the CPU, so callers compare and store them without caring where they ran.

    Args:
        module: the network.
        batches: a DataLoader or any iterable of ``(inputs, labels)``.
        rt: the resolved runtime (None: the module's current device, full precision).
        fn: ``fn(module, x)`` computes the output (default: ``module(x)``).
    """
    was_training = module.training
    home = module_device(module)
    device = rt.device if rt is not None else home
    if device != home:
        module.to(device)
    module.eval()
    outs, labels = [], []
    try:
        with layout(module, rt), rt.autocast() if rt is not None else nullcontext():
            cl = rt is not None and rt.channels_last
            run = fn or (lambda m, x: m(x))
            for x, y in batches:
                outs.append(run(module, _to(x, device, cl)).float().cpu())
                labels.append(y.cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(y))
    finally:
        module.train(was_training)
        if device != home:
            module.to(home)
    if not outs:
        raise ValueError("predict: no batches to evaluate")
    return torch.cat(outs), torch.cat(labels)


# --------------------------------------------------------------------------- randomness
def round_seed(seed: int, rnd: int, pid: int) -> int:
    """The one seed of client ``pid``'s work in round ``rnd`` of a run seeded ``seed``
    (shuffling, augmentations, dropout): different for every (client, round), the same on
    every run of one config."""
    return (seed * 1_000_003 + rnd * 1009 + pid) % 2**32


def seed_everything(seed: int) -> None:
    """Seed this process's torch, numpy and ``random`` (what in-process augmentations draw
    from) and, through Lightning, its DataLoader workers (``pl.seed_everything(workers=True)``):
    a Ray actor that ran other rounds before draws the same numbers as a fresh one."""
    import pytorch_lightning as pl

    pl.seed_everything(seed % 2**32, workers=True, verbose=False)


# --------------------------------------------------------------------------- simulation
def client_resources(cfg: ExperimentConfig, n_clients: int, machine: Machine | None = None):
    """Ray resources of each simulated client and of the whole simulation, checked against the
    machine before anything starts.

    Returns ``(client_resources, init_args)`` for Flower's Ray backend:
    ``{"num_cpus": c, "num_gpus": g}`` per client and ``{"num_cpus": ..., "num_gpus": ...}``.

    Raises:
        ConfigError: a client asks for more CPUs or GPUs than the machine has, GPUs where there
            are none, a fraction above 1, or a GPU runtime with no GPU share per client.
    """
    m = machine or Machine.probe()
    f = cfg.federation
    rt = resolve(cfg, m)
    cpus = f.cpus_per_client
    if cpus <= 0:
        raise ConfigError(f"federation.cpus_per_client must be > 0, got {cpus}")
    if cpus > m.cpus:
        raise ConfigError(
            f"federation.cpus_per_client: {cpus:g}, but this machine has {m.cpus} usable CPUs, so "
            f"no client could start; set federation.cpus_per_client to at most {m.cpus} (and "
            f"train.threads to match)"
        )
    gpus = f.gpus_per_client
    if gpus is None:  # auto
        gpus = 0.0 if rt.accelerator == "cpu" else min(1.0, m.gpus / max(1, n_clients))
    if gpus < 0:
        raise ConfigError(f"federation.gpus_per_client must be >= 0, got {gpus}")
    if gpus > 0 and m.gpus == 0:
        raise ConfigError(
            f"federation.gpus_per_client: {gpus:g}, but no CUDA GPU is visible on this machine; "
            "set federation.gpus_per_client=0 (or auto)"
        )
    if gpus > 1:
        raise ConfigError(
            f"federation.gpus_per_client: {gpus:g}; a client trains on one GPU: use a value "
            "in (0, 1] (0.5: two clients share one GPU)"
        )
    if gpus > 0 and rt.accelerator == "cpu":
        raise ConfigError(
            f"federation.gpus_per_client: {gpus:g}, but runtime.accelerator is cpu; set "
            "runtime.accelerator=gpu (or auto) or federation.gpus_per_client=0"
        )
    if gpus == 0 and rt.accelerator == "gpu" and cfg.runtime.accelerator == "gpu":
        raise ConfigError(
            "runtime.accelerator: gpu, but federation.gpus_per_client is 0, so simulated "
            "clients see no GPU; set federation.gpus_per_client (e.g. 0.5) or leave it auto"
        )
    return (
        {"num_cpus": cpus, "num_gpus": gpus},
        {"num_cpus": m.cpus, "num_gpus": m.gpus if gpus > 0 else 0},
    )
