"""Batched views (``ssl.views: batched``): the geometry against torchvision's own crops and
rotations, what each group's settings do through kornia's operations, per-client settings inside
one batch,
the views' statistics against lightly's on the same images, and a client's round with them."""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from fedssl.config import load_config
from fedssl.federation import pretraining
from fedssl.methods.pretrain import build_ssl, check_ssl
from fedssl.methods.ssl.batch_views import BatchViews, crop_flip_rotate
from fedssl.methods.views import batch_views, views_dataset, views_transform

PLAIN = {  # no randomness left: min_scale 1 leaves only the whole image (aspect 1)
    "input_size": 28,
    "min_scale": 1.0,
    "hf_prob": 0.0,
    "rr_prob": 0.0,
    "rr_degrees": None,
    "cj_prob": 0.0,
    "cj_strength": 0.5,
    "random_gray_scale": 0.0,
    "gaussian_blur": 0.0,
    "normalize": {"mean": [0.5], "std": [0.5]},
}


def _images(n=8, size=28, chans=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, chans, size, size), generator=g, dtype=torch.uint8)


def test_crop_flip_rotate_is_torchvisions_resized_crop_flip_and_rotation():
    x = torch.rand(2, 1, 28, 28)
    one, zero = torch.ones(2), torch.zeros(2)
    # a 14 px crop whose corner is at row 5, column 10 (centre +3, -2 px from the image's)
    crop = crop_flip_rotate(x, one / 2, one / 2, zero + 3 / 14, zero - 2 / 14, one, zero)
    ref = TF.resized_crop(x, 5, 10, 14, 14, [28, 28], antialias=False)
    # torchvision clamps at the crop's edge, a sampler reads the pixel beyond it: inside equal
    assert torch.allclose(crop[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5)
    quarter = crop_flip_rotate(x, one, one, zero, zero, one, zero + math.pi / 2)
    assert torch.allclose(quarter, TF.rotate(x, 90), atol=1e-5)  # counter-clockwise
    # a rotated crop has black corners, as torchvision's rotation of the cropped image
    white, o, z = torch.ones(1, 1, 28, 28), torch.ones(1), torch.zeros(1)
    turned = crop_flip_rotate(white, o / 2, o / 2, z, z, o, z + math.pi / 4)
    ref = TF.rotate(TF.resized_crop(white, 7, 7, 14, 14, [28, 28]), 45)
    assert turned[0, 0, 0, 0] == 0 and turned[0, 0, 14, 14] == 1
    assert ((turned > 0.5) == (ref > 0.5)).float().mean() > 0.97
    assert torch.allclose(
        crop_flip_rotate(x, one, one, zero, zero, -one, zero), x.flip(-1), atol=1e-5
    )


def test_views_without_randomness_are_the_normalised_images_and_flips_follow_the_groups():
    x = _images()
    views = BatchViews([PLAIN])(x)
    assert len(views) == 2 and views[0].shape == (8, 1, 28, 28)
    expected = (x.float() / 255 - 0.5) / 0.5
    assert all(torch.allclose(v, expected, atol=1e-5) for v in views)
    flipping = BatchViews([PLAIN, dict(PLAIN, hf_prob=1.0)])  # client 1 always flips
    groups = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    v0 = flipping(x, groups)[0]
    for i, g in enumerate(groups.tolist()):
        want = expected[i].flip(-1) if g == 1 else expected[i]
        assert torch.allclose(v0[i], want, atol=1e-5), f"image {i} of client {g}"


def test_colour_blur_and_solarize_follow_the_settings_and_the_view():
    torch.manual_seed(0)
    # one channel: the jitter is brightness and contrast only (torchvision's saturation and hue
    # leave a single channel as it is), so each view is an affine map of its image's pixels
    x = 0.4 + 0.2 * torch.rand(16, 1, 28, 28)  # nothing reaches the clamps at 0 and 1
    jitter = BatchViews([dict(PLAIN, cj_prob=1.0, normalize=None)])
    v = jitter(x)[0]
    design = torch.stack([x.flatten(1), torch.ones_like(x.flatten(1))], -1)
    fit = torch.linalg.lstsq(design, v.flatten(1)[..., None]).solution  # (16, 2, 1)
    assert torch.allclose(design @ fit, v.flatten(1)[..., None], atol=1e-4)
    slopes = fit[:, 0, 0]
    assert slopes.std() > 0.1 and (slopes > 0.15).all() and (slopes < 2.0).all()
    # three channels: torchvision's factors (0.8 / 0.8 / 0.8 / 0.2 x strength), and grayscale
    rgb_jitter = jitter.pipelines(3, torch.device("cpu"))[0][0][0]
    assert (rgb_jitter.saturation, rgb_jitter.hue, rgb_jitter.p) == (0.4, 0.1, 1.0)
    gray = BatchViews([dict(PLAIN, random_gray_scale=1.0, normalize=None)])
    rgb = torch.rand(2, 3, 28, 28)
    assert torch.allclose(gray(rgb)[0], TF.rgb_to_grayscale(rgb, 3), atol=1e-3)
    # a blurred point keeps its mass and spreads symmetrically, by a sigma of 0.1-2 px: from
    # hardly (centre ~1) to 1 / (2 pi 2^2) = 0.04 at the centre; views 2 and 3 never blur, and
    # view 3 always solarizes (pixels >= 0.5 inverted)
    point = torch.zeros(64, 1, 15, 15)
    point[:, :, 7, 7] = 1.0
    small = dict(PLAIN, input_size=15, gaussian_blur=1.0, normalize=None)
    views = BatchViews([small], [{}, {"blur": 0.0}, {"blur": 0.0, "solarize": 1.0}])
    blurred, unblurred, _ = views(point)
    assert torch.allclose(blurred.sum((1, 2, 3)), torch.ones(64), atol=1e-5)
    assert torch.allclose(blurred, blurred.flip(-1)) and torch.allclose(blurred, blurred.flip(-2))
    centre = blurred[:, 0, 7, 7]
    assert centre.max() > 0.95 and 0.035 < centre.min() < 0.06
    assert torch.allclose(unblurred, point, atol=1e-5)
    ramp = torch.linspace(0, 1, 15).expand(2, 1, 15, 15)
    assert torch.allclose(views(ramp)[2], torch.where(ramp >= 0.5, 1 - ramp, ramp), atol=1e-5)


def test_views_have_the_statistics_of_lightlys_views_of_the_same_images():
    """The default config's views of digit-like blobs, made both ways: per-view mean, its spread
    over views, contrast and the share of bright pixels agree (seeds 0-2: within 0.004, 0.002,
    0.008, 0.007). Batched views without the crops' zoom (min_scale 1) are 0.036 darker with a
    0.034 smaller bright share; without colour jitter their bright share is 0.010 larger."""
    rng = np.random.default_rng(0)
    imgs = np.zeros((200, 28, 28), np.uint8)
    for i in range(200):
        r, c = rng.integers(8, 20, 2)
        imgs[i, r - 5 : r + 5, c - 3 : c + 3] = rng.integers(150, 255)
    cfg = load_config("configs/pretrain/default.yaml", ["ssl.views=batched"])
    torch.manual_seed(0)
    tf = views_transform(cfg)
    ref = torch.stack([v for im in imgs for v in tf(Image.fromarray(im))]) * 0.5 + 0.5
    ours = torch.cat(batch_views(cfg)(torch.from_numpy(imgs)[:, None])) * 0.5 + 0.5

    def stats(v):
        m = v.mean((1, 2, 3))
        return m.mean(), m.std(), v.std((1, 2, 3)).mean(), (v > 0.5).float().mean()

    for name, a, b, tol in zip(
        ("mean", "spread", "contrast", "bright"),
        stats(ref),
        stats(ours),
        (0.008, 0.005, 0.01, 0.008),
        strict=True,
    ):
        assert abs(float(a) - float(b)) < tol, f"{name}: lightly {a:.4f}, batched {b:.4f}"


def test_the_config_picks_the_views_and_refuses_what_cannot_be_batched(tiny_pretrain, tmp_path):
    over = tiny_pretrain(tmp_path, "bv")
    cfg = load_config("configs/pretrain/default.yaml", [*over, "ssl.views=batched"])
    image, client = views_dataset(cfg, 1)[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28) and client == 1
    module = build_ssl(cfg)
    assert isinstance(module.view_maker, BatchViews)
    assert module.view_maker.per_view == [{"blur": 1.0, "solarize": 0.0}] * 2
    byol = build_ssl(load_config(None, [*over, "ssl.views=batched", "ssl.method=byol"]))
    assert byol.view_maker.per_view[1] == {"blur": 0.1, "solarize": 0.2}  # BYOL's second view
    # auto (the default): batched wherever the method's views can be, lightly's for DINO
    assert isinstance(build_ssl(load_config("configs/pretrain/default.yaml", over)).view_maker,
                      BatchViews)  # fmt: skip
    lightly = load_config("configs/pretrain/default.yaml", [*over, "ssl.views=lightly"])
    assert build_ssl(lightly).view_maker is None
    assert build_ssl(load_config(None, [*over, "ssl.method=dino"])).view_maker is None
    with pytest.raises(ValueError, match="dino's views cannot be batched"):
        check_ssl(load_config(None, [*over, "ssl.views=batched", "ssl.method=dino"]))
    with pytest.raises(ValueError, match="ssl.views"):
        load_config(None, [*over, "ssl.views=kornia"])


def test_a_round_with_batched_views_trains_and_repeats_bit_for_bit(tiny_pretrain, tmp_path):
    cfg = load_config(
        "configs/pretrain/default.yaml",
        [*tiny_pretrain(tmp_path, "bvr"), "ssl.views=batched", "train.local_steps=2"],
    )
    start = pretraining.initial_state(cfg)
    first, metrics = pretraining.local_train(cfg, 1, start, 2)
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
    assert not all(torch.equal(first[k], start[k]) for k in start)
    torch.rand(1000)  # the views draw from the round's seeded generator, not what ran before
    again, _ = pretraining.local_train(cfg, 1, start, 2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    lightly = load_config(
        "configs/pretrain/default.yaml",
        [*tiny_pretrain(tmp_path, "lv"), "ssl.views=lightly", "train.local_steps=2"],
    )
    other, _ = pretraining.local_train(lightly, 1, start, 2)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_elastic_distortion_moves_strokes_keeps_flat_areas_and_needs_batched_views(
    tiny_pretrain, tmp_path
):
    torch.manual_seed(0)
    x = _images()
    still = BatchViews([dict(PLAIN, elastic_prob=1.0, elastic_alpha=0.0)])(x)[0]
    assert torch.allclose(still, (x.float() / 255 - 0.5) / 0.5, atol=1e-5)  # no displacement
    bar = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    bar[:, :, 6:22, 12:16] = 255  # a vertical stroke
    bent = BatchViews([dict(PLAIN, elastic_prob=1.0, normalize=None)])(bar)[0]
    plain = bar.float() / 255
    moved = (bent - plain).abs().sum((1, 2, 3)) / plain.sum((1, 2, 3))
    assert (moved > 0.1).all()  # every stroke bends ...
    mass = bent.sum((1, 2, 3)) / plain.sum((1, 2, 3))  # thicker here, thinner there ...
    assert ((mass > 0.5) & (mass < 2)).all() and 0.85 < mass.mean() < 1.2  # ... not fading
    white = torch.full((8, 1, 28, 28), 255, dtype=torch.uint8)
    flat = BatchViews([dict(PLAIN, elastic_prob=1.0, normalize=None)])(white)[0]
    assert torch.allclose(flat[..., 8:-8, 8:-8], torch.ones(8, 1, 12, 12), atol=1e-5)
    over = tiny_pretrain(tmp_path, "el")
    with pytest.raises(ValueError, match="elastic_prob=0.5 needs ssl.views=batched"):
        check_ssl(load_config(None, [*over, "ssl.views=lightly", "ssl.elastic_prob=0.5"]))
    with pytest.raises(ValueError, match=r"ssl.elastic_sigma: 0.0 is not allowed; it must be > 0"):
        load_config(None, [*over, "ssl.views=batched", "ssl.elastic_prob=0.5",
                           "ssl.elastic_sigma=0"])  # fmt: skip
    with pytest.raises(ValueError, match="elastic_sigma > 0"):  # a client's own views too
        own = "ssl.client_views.fashion_mnist.elastic_sigma=0"
        check_ssl(load_config(None, [*over, "ssl.views=batched", "ssl.elastic_prob=0.5", own]))
    cfg = load_config(None, [*over, "ssl.views=batched", "ssl.elastic_prob=0.5"])
    assert batch_views(cfg).settings["elastic_prob"] == [0.5, 0.5]  # both clients'


def test_crop_ratio_bounds_each_clients_crop_aspect_and_needs_batched_views(
    tiny_pretrain, tmp_path, monkeypatch
):
    """``crop_ratio``: aspect ratios drawn from [1 / r, r]; 1 keeps every crop square (the
    image's aspect), per client; torchvision's 4/3 by default; lightly's crops cannot change."""
    import fedssl.methods.ssl.batch_views as bv

    seen = []
    real = bv.crop_flip_rotate
    monkeypatch.setattr(
        bv, "crop_flip_rotate", lambda x, w, h, *a: seen.append(w / h) or real(x, w, h, *a)
    )
    torch.manual_seed(0)
    x = _images(n=400)
    groups = torch.arange(400) % 2  # client 0: square crops; client 1: the default range
    free = {k: v for k, v in PLAIN.items() if k != "min_scale"}
    BatchViews([dict(free, min_scale=0.3, crop_ratio=1.0), dict(free, min_scale=0.3)])(x, groups)
    aspect = torch.cat(seen)
    square, default = aspect[groups.repeat(2) == 0], aspect[groups.repeat(2) == 1]
    assert torch.allclose(square, torch.ones_like(square), atol=1e-6)
    assert default.min() >= 3 / 4 - 1e-6 and default.max() <= 4 / 3 + 1e-6
    assert default.min() < 0.8 and default.max() > 1.25  # the whole range is used
    over = [*tiny_pretrain(tmp_path, "cr"), "ssl.client_views.fashion_mnist.crop_ratio=1.0"]
    with pytest.raises(ValueError, match="crop_ratio=1.0 needs ssl.views=batched"):
        check_ssl(load_config(None, [*over, "ssl.views=lightly"]))
    with pytest.raises(ValueError, match=r"ssl.crop_ratio: 0.5 is not allowed; it must be >= 1"):
        load_config(None, [*over, "ssl.views=batched", "ssl.crop_ratio=0.5"])
    with pytest.raises(ValueError, match="crop_ratio=0.5 must be >= 1"):  # a client's own
        check_ssl(load_config(None, [*over, "ssl.views=batched",
                                     "ssl.client_views.fashion_mnist.crop_ratio=0.5"]))  # fmt: skip
    cfg = load_config(None, [*over, "ssl.views=batched"])
    check_ssl(cfg)
    assert batch_views(cfg).settings["crop_ratio"] == pytest.approx([1.0, 1.0])  # both: fashion


def test_a_larger_cached_image_is_cropped_straight_to_the_input_size():
    import torch.nn.functional as F

    x = torch.rand(3, 3, 56, 56)
    one, zero = torch.ones(3), torch.zeros(3)
    whole = crop_flip_rotate(x, one, one, zero, zero, one, zero, size=28)
    assert whole.shape == (3, 3, 28, 28)
    assert torch.allclose(whole, F.interpolate(x, size=(28, 28), mode="bilinear"), atol=1e-5)
    # the centre half of the 56 px image, at 28 px: its own pixels, one for one (a crop of the
    # image shrunk to 28 px first would be blurred by that shrinking)
    half = crop_flip_rotate(x, one / 2, one / 2, zero, zero, one, zero, size=28)
    assert torch.allclose(half, x[..., 14:42, 14:42], atol=1e-5)
    rgb = dict(PLAIN, normalize={"mean": [0.5], "std": [0.5]})
    big = _images(4, size=56, chans=3)
    views = BatchViews([rgb])(big)
    assert views[0].shape == (4, 3, 28, 28)
    want = F.interpolate(big.float() / 255, size=(28, 28), mode="bilinear")
    assert torch.allclose(views[0], (want - 0.5) / 0.5, atol=1e-5)


def test_data_cache_side_enlarges_only_images_decoded_from_files(tiny_pretrain, tiny_flowers,
                                                                 tmp_path):  # fmt: skip
    from fedssl.data.cache import clear
    from fedssl.data.datasets import build_dataset
    from fedssl.methods.views import cache_side, training_batches

    over = [*tiny_pretrain(tmp_path, "side"), "data.cache_side=1.5"]
    cfg = load_config("configs/pretrain/default.yaml", over)
    fashion = build_dataset("fashion_mnist", "train", root=cfg.data.root)
    flowers = build_dataset("flower102", "train", root=str(tiny_flowers))
    assert cache_side(cfg, fashion) == 28 and cache_side(cfg, flowers) == 42
    rgb = load_config(
        "configs/pretrain/default.yaml",
        [*over, "data.clients=[flower102]", f"data.roots.flower102={tiny_flowers}",
         "model.in_chans=3", "train.batch_size=4", "data.labeled_fraction=0.5"],
    )  # fmt: skip
    clear()
    batches, n = training_batches(rgb, 0, seed=0)
    images, group = next(iter(batches))
    assert images.shape == (4, 3, 42, 42) and images.dtype == torch.uint8
    assert build_ssl(rgb).view_maker(images, group)[0].shape == (4, 3, 28, 28)
    for bad in ("0.5", "5"):
        with pytest.raises(ValueError, match=r"data.cache_side: .* it must be in \[1, 4\]"):
            load_config("configs/pretrain/default.yaml", [*over[:-1], f"data.cache_side={bad}"])
