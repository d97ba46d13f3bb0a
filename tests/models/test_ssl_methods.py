"""Every SSL method: built from the config on a small-image backbone, learns on a fixed batch,
and names every tensor of its state as one of its parts; the config's method settings are
checked."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedssl.config import load_config
from fedssl.methods.pretrain import build_ssl
from fedssl.methods.ssl import METHODS, method_class
from fedssl.methods.ssl.base import recipe
from fedssl.methods.ssl_recipe import method_settings
from fedssl.methods.views import views_transform
from fedssl.models.backbones import build_backbone, macs_per_image


def _cfg(method: str, *extra: str):
    over = [f"ssl.method={method}", "model.backbone=sresnet10_w8", "model.image_size=16"]
    over += [f"train.{k}={v}" for k, v in method_class(method).TRAIN.items()]
    return load_config(None, [*over, "data.clients=[mnist]", "model.in_chans=1", *extra])


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_learns_and_every_tensor_belongs_to_a_part(method):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    extra = ["ssl.target_momentum=1.0"] if "target_momentum" in recipe(method_class(method)) else []
    cfg = _cfg(method, *extra)  # a frozen target: the online loss against it must fall
    module = build_ssl(cfg)
    tf = views_transform(cfg)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)) for _ in range(16)]
    views = [torch.stack(v) for v in zip(*[tf(i) for i in images], strict=True)]
    assert len(views) == (4 if method == "dino" else 2)  # dino: 2 global + 2 local crops
    queue0 = module.local_extra()
    center0 = {k: v.clone() for k, v in module.criterion.state_dict().items()}
    before = module.loss(views).item()
    opt = module.configure_optimizers()
    for _ in range(6):
        opt.zero_grad()
        module.loss(views).backward()
        opt.step()
        module.after_step()
    module.load_local_extra(queue0)  # moco: score against the same queue ...
    module.criterion.load_state_dict(center0)  # ... dino: with the same centre
    after = module.loss(views).item()
    assert after < before, f"{method}: loss {before:.4f} -> {after:.4f}"
    parts = module.prefixes(list(module.PARTS))
    stray = [k for k in module.state_dict() if not k.startswith(parts)]
    assert not stray, f"{method}: tensors outside its parts: {stray[:3]}"
    travel = module.prefixes(module.check_travel([]))
    assert travel and all(p in parts for p in travel)


def test_method_settings_come_from_the_recipe_and_say_what_does_not_apply():
    assert method_settings(_cfg("moco"))["queue_size"] == recipe(method_class("moco"))["queue_size"]
    assert method_settings(_cfg("moco", "ssl.queue_size=64"))["queue_size"] == 64
    with pytest.warns(UserWarning, match="ssl.queue_size=64 does not apply to ssl.method=simclr"):
        assert "queue_size" not in method_settings(_cfg("simclr", "ssl.queue_size=64"))
    with pytest.warns(UserWarning, match="model.pred_hidden=32 does not apply"):
        method_settings(_cfg("vicreg", "model.pred_hidden=32"))
    with pytest.raises(ValueError, match="fedu updates a travelling prediction head"):
        method_settings(_cfg("moco", "ssl.client_update=fedu"))
    with pytest.raises(ValueError, match="has no part 'prediction_head'"):
        method_settings(_cfg("simclr", "ssl.travel=[backbone,prediction_head]"))
    with pytest.raises(ValueError, match="'queue' never leaves a client"):
        method_settings(_cfg("moco", "ssl.travel=[backbone,queue]"))
    with pytest.raises(ValueError, match="must include the backbone"):
        method_settings(_cfg("byol", "ssl.travel=[projection_head]"))
    with pytest.raises(ValueError, match="model.proj_layers: 1 is not allowed; it must be >= 2"):
        method_settings(_cfg("simclr", "model.proj_layers=1"))
    deep = build_ssl(_cfg("simclr", "model.proj_layers=3")).projection_head
    assert sum(isinstance(m, torch.nn.Linear) for m in deep.modules()) == 3  # SimCLR v2's head


def test_a_method_run_with_another_optimizer_than_its_recipe_says_how_to_use_it():
    # VICReg diverges at SimCLR's SGD 0.06: `--set ssl.method=vicreg` on an SGD config warns
    # with the settings to add; the recipe's optimizer at any rate is taken as deliberate.
    with pytest.warns(UserWarning, match=r"this run uses train.optimizer=sgd train.lr=0.06") as w:
        method_settings(_cfg("vicreg", "train.optimizer=sgd", "train.lr=0.06"))
    fix = "--set train.optimizer=adamw train.lr=0.001 train.weight_decay=0.0001"
    assert any(str(x.message).endswith(fix) for x in w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method_settings(_cfg("vicreg", "train.lr=0.003"))  # adamw at another rate: no warning
        method_settings(_cfg("simclr", "train.optimizer=adamw"))  # no recipe optimizer: none


def test_small_image_resnet_keeps_resolution_at_a_fraction_of_the_macs():
    small = build_backbone("sresnet18_w16", in_chans=1)
    assert small.num_features == 128
    big = build_backbone("resnet18", in_chans=1, small_input=True)  # same stem, full width
    assert macs_per_image(small, 28, 1) < macs_per_image(big, 28, 1) / 10
    maps = []
    small.layer4.register_forward_hook(lambda m, i, o: maps.append(o.shape[-1]))
    small(torch.zeros(1, 1, 28, 28))
    assert maps == [4]  # resnet18's ImageNet stem leaves 1x1 maps here
    with pytest.raises(ValueError, match="even"):
        build_backbone("sresnet18_w7")


@pytest.mark.parametrize("method", ["byol", "moco", "dino"])
def test_the_target_starts_as_the_online_network_and_follows_it_by_ema(method):
    torch.manual_seed(0)
    module = build_ssl(_cfg(method, "ssl.target_momentum=0.25"))
    k = "conv1.weight"
    with torch.no_grad():
        module.backbone.get_parameter(k).add_(1.0)  # online and target now differ
    module.start_local_parts()
    assert torch.equal(module.backbone_momentum.get_parameter(k), module.backbone.get_parameter(k))
    old = module.backbone_momentum.get_parameter(k).clone()
    with torch.no_grad():
        module.backbone.get_parameter(k).mul_(3.0)
    module.after_step()
    want = 0.25 * old + 0.75 * module.backbone.get_parameter(k)
    assert torch.allclose(module.backbone_momentum.get_parameter(k), want)


@pytest.mark.parametrize("head_batch_norm", [True, False])
def test_dino_head_batch_norm_keeps_the_prototypes_apart(head_batch_norm):
    """DINO on a small-image ResNet (SGD, the centre updating as in training): without
    BatchNorm in the head every image lands on one prototype within ten steps (the collapse seen
    in the frontier: loss near 0, then ln(prototypes) once the centre catches up); with it (the
    recipe's default) the images keep several prototypes."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    opts = ["train.optimizer=sgd", "train.lr=0.03", "ssl.prototypes=256"]
    if not head_batch_norm:
        opts.append("ssl.head_batch_norm=false")
    module = build_ssl(_cfg("dino", *opts))
    assert recipe(method_class("dino"))["head_batch_norm"] is True
    tf = views_transform(_cfg("dino"))
    images = [Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)) for _ in range(32)]
    opt = module.configure_optimizers()
    for _ in range(10):
        views = [torch.stack(v) for v in zip(*[tf(i) for i in images], strict=True)]
        opt.zero_grad()
        module.loss(views).backward()
        opt.step()
        module.after_step()
    with torch.no_grad():
        used = module.projection_head(module.backbone(views[0])).argmax(1).unique().numel()
    if head_batch_norm:
        assert used >= 4
    else:
        assert used == 1


@pytest.mark.parametrize("config", ["default.yaml", "personal.yaml", "personal-vicreg.yaml"])
def test_the_shipped_configs_leave_each_methods_head_widths_to_its_recipe(config):
    # Until 2026-12-01 the configs set SimCLR's 512 / 128, so `--set ssl.method=vicreg` (and the
    # SSL frontier) ran VICReg with a 128-wide expander instead of its 1024 / 1024.
    path = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / config
    for method in ("simclr", "vicreg", "byol", "barlowtwins", "simsiam"):
        got = method_settings(load_config(path, [f"ssl.method={method}"]), warn=False)
        want = recipe(method_class(method))
        assert (got["proj_hidden"], got["proj_out"]) == (want["proj_hidden"], want["proj_out"])
    # SimCLR's own recipe is what the configs set before: its runs do not change
    simclr = method_settings(load_config(path, ["ssl.method=simclr"]), warn=False)
    assert (simclr["proj_hidden"], simclr["proj_out"]) == (512, 128)
