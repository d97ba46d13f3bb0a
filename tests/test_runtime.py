"""fedssl.runtime: one place resolves devices, precision, layout and loaders; every evaluation
helper moves its inputs to the module's device (checked with fake CUDA tensors, no GPU needed)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from fedssl import runtime
from fedssl.config import ConfigError, RuntimeConfig, load_config
from fedssl.runtime import Machine

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "pretrain" / "paper.yaml"
DEFAULT = ROOT / "configs" / "pretrain" / "default.yaml"
CPU_BOX = Machine(cpus=2)
GPU_BOX = Machine(cpus=16, gpus=1, gpu_name="NVIDIA H200", bf16=True)
OLD_GPU = Machine(cpus=8, gpus=1, gpu_name="Tesla V100", bf16=False)


def test_paper_config_resolves_to_a_bf16_channels_last_gpu_trainer_sharing_the_gpu():
    cfg = load_config(PAPER)
    rt = runtime.resolve(cfg, GPU_BOX)
    assert (rt.accelerator, rt.precision, rt.channels_last) == ("gpu", "bf16-mixed", True)
    assert rt.workers == 6 and rt.pin_memory and rt.cudnn_benchmark
    assert rt.device == torch.device("cuda", 0) and rt.autocast_dtype is torch.bfloat16
    kw = runtime.trainer_kwargs(rt, max_epochs=1)
    assert kw["accelerator"] == "gpu" and kw["precision"] == "bf16-mixed"
    assert kw["devices"] == [0] and kw["max_epochs"] == 1
    client, ray = runtime.client_resources(cfg, 2, GPU_BOX)
    assert client == {"num_cpus": 8.0, "num_gpus": 0.5}
    assert ray == {"num_cpus": 16, "num_gpus": 1}


def test_default_config_on_a_cpu_machine_resolves_to_cpu():
    cfg = load_config(DEFAULT)
    rt = runtime.resolve(cfg, CPU_BOX)
    assert (rt.accelerator, rt.precision, rt.pin_memory) == ("cpu", "32-true", False)
    assert rt.device == torch.device("cpu") and rt.autocast_dtype is None
    assert runtime.client_resources(cfg, 2, CPU_BOX)[0] == {"num_cpus": 1.0, "num_gpus": 0.0}
    # the same config on a GPU machine takes its GPU, shared evenly by the clients
    assert runtime.resolve(cfg, GPU_BOX).accelerator == "gpu"
    assert runtime.client_resources(cfg, 2, GPU_BOX)[0]["num_gpus"] == 0.5
    trainer = runtime.trainer(runtime.resolve(cfg))  # this machine: a real Trainer
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
    assert trainer.precision == "32-true"


@pytest.mark.parametrize(
    "overrides, machine, message",
    [
        (["runtime.accelerator=gpu"], CPU_BOX, "no CUDA GPU is visible"),
        (["runtime.precision=16-mixed"], CPU_BOX, "16-mixed needs a GPU"),
        (["runtime.precision=bf16-mixed"], OLD_GPU, "Tesla V100 has no bfloat16"),
        (["runtime.workers=9"], CPU_BOX, "at most 1"),
        (["runtime.devices=2"], GPU_BOX, "one fit uses one device"),
    ],
)
def test_what_a_device_cannot_do_is_refused(overrides, machine, message):
    with pytest.raises(ConfigError, match=message):
        runtime.resolve(load_config(DEFAULT, overrides), machine)


@pytest.mark.parametrize(
    "overrides, machine, message",
    [
        (["federation.cpus_per_client=8"], CPU_BOX, "has 2 usable CPUs.*at most 2"),
        (["federation.gpus_per_client=0.5"], CPU_BOX, "no CUDA GPU is visible"),
        (["federation.gpus_per_client=2"], GPU_BOX, r"in \(0, 1\]"),
        (["federation.gpus_per_client=0.5", "runtime.accelerator=cpu"], GPU_BOX, "is cpu"),
        (["federation.gpus_per_client=0", "runtime.accelerator=gpu"], GPU_BOX, "see no GPU"),
    ],
)
def test_impossible_client_resources_are_refused(overrides, machine, message):
    with pytest.raises(ConfigError, match=message):
        runtime.client_resources(load_config(DEFAULT, overrides), 2, machine)


def test_usable_cpus_follow_the_affinity_mask():
    import os

    assert runtime.usable_cpus() == len(os.sched_getaffinity(0))
    assert Machine.probe().cpus == runtime.usable_cpus()


def test_runtime_section_auto_values_and_the_moved_workers_key():
    cfg = load_config(None, ["runtime.channels_last=auto", "runtime.pin_memory=false"])
    assert cfg.runtime.channels_last is None and cfg.runtime.pin_memory is False
    # configs saved before the runtime section (train.workers) still load
    old = load_config(None, ["train.workers=3"])
    assert old.runtime.workers == 3
    with pytest.raises(ConfigError, match="unknown config key 'runtime.acelerator'"):
        load_config(None, ["runtime.acelerator=gpu"])
    with pytest.raises(ConfigError, match="runtime.precision: 'fp8' is not allowed"):
        load_config(None, ["runtime.precision=fp8"])


def test_loader_takes_the_runtime_workers_and_pinning():
    rt = runtime.resolve(RuntimeConfig(workers=1), CPU_BOX)
    ds = torch.utils.data.TensorDataset(torch.arange(10.0))
    dl = runtime.loader(rt, ds, 4, shuffle=True, seed=3)
    assert dl.num_workers == 1 and dl.persistent_workers and not dl.pin_memory
    assert runtime.loader(rt, ds, 4, workers=False).num_workers == 0
    # same seed, same order
    a = [b[0].tolist() for b in runtime.loader(None, ds, 4, shuffle=True, seed=3)]
    b = [b[0].tolist() for b in runtime.loader(None, ds, 4, shuffle=True, seed=3)]
    assert a == b and sorted(sum(a, [])) == list(range(10))


def test_layout_is_channels_last_inside_and_contiguous_after_and_nests():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    rt = runtime.resolve(RuntimeConfig(), CPU_BOX)
    w = net[0].weight
    with runtime.layout(net, rt):
        assert not net[0].weight.is_contiguous()
        with runtime.layout(net, rt):  # an evaluation inside a fit leaves the layout alone
            pass
        assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert not net[0].weight.is_contiguous()
    assert net[0].weight.is_contiguous() and torch.equal(net[0].weight, w)
    off = runtime.resolve(RuntimeConfig(channels_last=False), CPU_BOX)
    with runtime.layout(net, off):
        assert net[0].weight.is_contiguous()


def test_predict_returns_float32_on_cpu_under_bf16_autocast_and_restores_the_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).train()
    rt = runtime.resolve(RuntimeConfig(precision="bf16-mixed"), CPU_BOX)
    x, y = torch.randn(5, 1, 8, 8), torch.arange(5)
    seen = []
    out, labels = runtime.predict(net, [(x, y)], rt, fn=lambda m, v: seen.append(m(v)) or m(v))
    assert seen[0].dtype == torch.bfloat16  # autocast was on
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (5, 3)
    assert torch.equal(labels, y) and net.training
    full, _ = runtime.predict(net, [(x, y)])
    assert torch.allclose(out, full, atol=0.1) and not torch.equal(out, full)


# ----------------------------------------------------------------- device-aware evaluation
# A module on a (fake) CUDA device fed CPU batches: each helper must move the inputs to the
# module's device. Before the runtime layer they raised "Expected all tensors to be on the
# same device". Fake tensors carry no values, so helpers that turn a count into a Python
# number stop there with DataDependentOutputException: past the device check.


def _fake_cuda(module: nn.Module) -> nn.Module:
    """``module`` (built with real weights, outside the fake mode) on a fake CUDA device."""
    return module.to("cuda")


def _conv_net(classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes)
    )


def test_the_fake_cuda_check_bites_without_moving_inputs():
    net = _conv_net()
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = _fake_cuda(net)
        with pytest.raises(RuntimeError, match="same device"):
            net(torch.randn(2, 1, 8, 8))


def test_knn_monitor_features_follow_the_module_device():
    from fedssl.methods.knn import extract_features

    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    with FakeTensorMode(allow_non_fake_inputs=True):
        backbone = _fake_cuda(backbone)
        feats, labels = extract_features(backbone, [(x, y)])
        assert feats.device.type == "cpu" and feats.dtype == torch.float32
        assert feats.shape == (6, 4 * 6 * 6)


def test_accuracy_follows_the_module_device():
    from fedssl.methods.supervised import accuracy

    x, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 3
    net = _conv_net()
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = _fake_cuda(net)
        with pytest.raises(DataDependentOutputException):
            accuracy(net, x, y, batch_size=4)


def test_linear_head_features_and_stage_two_scoring_follow_the_module_device():
    from fedssl.methods.heads import BackboneClassifier
    from fedssl.methods.supervised import batches_accuracy

    x, y = torch.randn(4, 1, 8, 8), torch.arange(4) % 2
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone.num_features = 4
    module = BackboneClassifier(backbone, 2, mode="linear")
    with FakeTensorMode(allow_non_fake_inputs=True):
        module = _fake_cuda(module)
        feats, labels = runtime.predict(module.backbone, [(x, y)], None)
        assert feats.device.type == "cpu" and feats.shape == (4, 4)
        with pytest.raises(DataDependentOutputException):
            batches_accuracy(module, [(x, y)], None)


def test_centralized_epoch_evaluation_follows_the_module_device():
    from fedssl.experiments.centralized import _EpochEval

    x, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 3
    cb = _EpochEval(x, y, 4)
    net = _conv_net()
    with FakeTensorMode(allow_non_fake_inputs=True):
        module = SimpleNamespace(net=_fake_cuda(net))
        with pytest.raises(DataDependentOutputException):
            cb.on_train_epoch_end(SimpleNamespace(current_epoch=0), module)
