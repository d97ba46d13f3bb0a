"""SimCLR module: timm backbones, lightly views for small grayscale images, learning, export."""

import pytest
import torch
from PIL import Image

from fedssl.config import load_config
from fedssl.methods.ssl.simclr import SimCLR
from fedssl.methods.views import augmentation
from fedssl.models.backbones import (
    build_backbone,
    check_backbone_name,
    export_backbone,
    load_backbone,
)


def test_backbone_any_timm_name_and_errors():
    net = build_backbone("test_resnet", in_chans=1)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, net.num_features)
    with pytest.raises(ValueError, match="unknown model 'no_such_net'"):
        build_backbone("no_such_net")
    with pytest.raises(ValueError, match="ResNet-style stem"):
        build_backbone("test_vit", small_input=True)


def test_backbone_names_are_checked_without_building():
    # the launchers' preflight: timm names and the small-image ResNets pass, nothing else
    for name in ("resnet18", "test_resnet", "sresnet10_w16", "sresnet34_w8"):
        check_backbone_name(name)
    with pytest.raises(ValueError, match=r"'resnet9999' is neither a timm model \(close: "):
        check_backbone_name("resnet9999")
    with pytest.raises(ValueError, match="width must be even"):
        check_backbone_name("sresnet18_w15")
    with pytest.raises(ValueError, match="neither"):
        check_backbone_name("sresnet12_w16")  # no such depth


def test_small_input_stem_keeps_resolution():
    plain = build_backbone("resnet18", in_chans=1)
    small = build_backbone("resnet18", in_chans=1, small_input=True)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    x = torch.randn(2, 1, 28, 28)
    small.eval(), plain.eval()
    feats = {}
    small.layer1.register_forward_hook(lambda m, i, o: feats.__setitem__("small", o.shape))
    plain.layer1.register_forward_hook(lambda m, i, o: feats.__setitem__("plain", o.shape))
    small(x), plain(x)
    assert feats["small"][-1] == 28 and feats["plain"][-1] == 7


def _views(*overrides: str):
    """SimCLR's views as stage one builds them: the config's augmentation, the method's
    transform."""
    cfg = load_config(None, ["model.image_size=28", *overrides])
    return SimCLR.views(**augmentation(cfg))


@pytest.mark.parametrize(("mode", "chans"), [("L", 1), ("RGB", 3)])
def test_views_for_small_images(mode, chans):
    tf = _views(f"model.in_chans={chans}", "ssl.min_scale=0.3")
    img = Image.new(mode, (28, 28), color=128 if mode == "L" else (10, 200, 30))
    views = tf(img)
    assert len(views) == 2
    assert all(v.shape == (chans, 28, 28) for v in views)


def test_small_images_get_no_blur_and_one_channel_no_grayscale():
    cfg = load_config(None, ["model.image_size=28", "model.in_chans=1"])
    aug = augmentation(cfg)
    assert aug["gaussian_blur"] == 0.0 and aug["random_gray_scale"] == 0.0
    cfg = load_config(None, ["model.image_size=64", "model.in_chans=3"])
    aug = augmentation(cfg)
    assert aug["gaussian_blur"] == 0.5 and aug["random_gray_scale"] == 0.2


def test_rotation_views_only_when_asked():
    # A bar image; crops and flips off, so only a rotation can change it.
    img = Image.new("L", (28, 28), color=0)
    img.paste(255, (12, 2, 16, 26))
    base = ["model.in_chans=1", "ssl.min_scale=1.0", "ssl.cj_prob=0.0", "ssl.hf_prob=0.0"]
    torch.manual_seed(0)
    plain = _views(*base, "ssl.rr_prob=0.0")
    assert all(torch.equal(plain(img)[0], plain(img)[1]) for _ in range(5))
    rotated = _views(*base, "ssl.rr_prob=1.0", "ssl.rr_degrees=45")
    outs = [v for _ in range(5) for v in rotated(img)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    with pytest.raises(ValueError, match="rr_degrees"):
        _views("model.in_chans=1", "ssl.rr_prob=0.5", "ssl.rr_degrees=0")


def test_each_client_trains_on_its_own_views():
    # Rotations for every client but MNIST's: the same bar image is rotated by client 0's
    # views and never by client 1's (digits: a 6 rotated far is a 9).
    from fedssl.methods.views import views_transform

    img = Image.new("L", (28, 28), color=0)
    img.paste(255, (12, 2, 16, 26))
    cfg = load_config(None, ["data.clients=[fashion_mnist,mnist]", "model.in_chans=1",
                             "ssl.min_scale=1.0", "ssl.cj_prob=0.0", "ssl.hf_prob=0.0",
                             "ssl.rr_prob=1.0", "ssl.rr_degrees=45",
                             "ssl.client_views.mnist.rr_prob=0.0"])  # fmt: skip
    torch.manual_seed(0)
    fashion, digits = views_transform(cfg, 0), views_transform(cfg, 1)
    outs = [v for _ in range(5) for v in fashion(img)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert all(torch.equal(digits(img)[0], digits(img)[1]) for _ in range(5))
    # the section's own views (no client) keep the rotation
    assert augmentation(cfg)["rr_prob"] == 1.0 and augmentation(cfg, 1)["rr_prob"] == 0.0


def test_simclr_learns_to_match_views():
    torch.manual_seed(0)
    module = SimCLR(
        "test_resnet", in_chans=1, proj_hidden=32, proj_out=16, optimizer="adam", lr=3e-3
    )
    opt = module.configure_optimizers()
    x = torch.rand(32, 1, 28, 28)

    def views():
        noise = 0.05 * torch.randn_like(x)
        return [x + noise, x + 0.05 * torch.randn_like(x)]

    with torch.no_grad():
        module.eval()
        before = module.loss(views()).item()
    module.train()
    for _ in range(40):
        loss = module.loss(views())
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        after = module.loss(views()).item()
    assert after < before - 0.5, (before, after)
    assert all(k.startswith(("backbone.", "projection_head.")) for k in module.state_dict())


def test_export_and_load_backbone_roundtrip(tmp_path):
    module = SimCLR("test_resnet", in_chans=1, proj_hidden=16, proj_out=8)
    meta = {"backbone": "test_resnet", "in_chans": 1, "small_input": False, "round": 3}
    path = export_backbone(module.state_dict(), tmp_path / "backbone.safetensors", meta)
    net, got = load_backbone(path)
    assert got["round"] == "3" and got["backbone"] == "test_resnet"
    x = torch.randn(4, 1, 28, 28)
    module.backbone.eval(), net.eval()
    assert torch.allclose(module.backbone(x), net(x))


def test_load_backbone_mismatch_is_clear(tmp_path):
    module = SimCLR("test_resnet", in_chans=1, proj_hidden=16, proj_out=8)
    path = export_backbone(
        module.state_dict(), tmp_path / "b.safetensors", {"backbone": "resnet18", "in_chans": 1}
    )
    with pytest.raises(ValueError, match="does not fit 'resnet18'"):
        load_backbone(path)
    with pytest.raises(FileNotFoundError):
        load_backbone(tmp_path / "missing.safetensors")
