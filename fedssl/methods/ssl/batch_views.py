"""SSL views made from a whole batch at once, on the batch's device (``ssl.views: batched``).

lightly's transforms make each view from a PIL image in the data loader's workers: on a 2-CPU
machine that is about a quarter of a training step, and on a GPU the CPU workers become the
bottleneck. Here the loader only delivers the images (``uint8``, resized and centre-cropped to
the input size) and every view is made by tensor operations on the device the batch lands on:

* random resized crop (area ``min_scale``-1, aspect 3/4-4/3), horizontal flip and rotation,
  composed into one affine map per image and sampled bilinearly (``affine_grid`` /
  ``grid_sample``; a rotation's corners are black, as torchvision's);
* elastic distortion with probability ``elastic_prob`` (Simard et al. 2003: a random
  displacement field smoothed by ``elastic_sigma`` px and scaled by ``elastic_alpha`` px; off by
  default, and only here: lightly has none);
* colour jitter with probability ``cj_prob``: brightness, contrast, saturation (0.8 x
  ``cj_strength``) and hue (0.2 x ``cj_strength``) in a random order per image, as torchvision's
  ``ColorJitter`` (saturation and hue leave one channel unchanged);
* random grayscale, Gaussian blur (sigma 0.1-2, the probability scaled per view), solarization
  (pixels >= 0.5 inverted), then the normalisation.

The settings are the keywords of :func:`fedssl.methods.pretrain.augmentation`, one set per
**group** (a client: a centralized batch mixes clients with different views), and each method
says per view how its blur and solarization differ (``SSLMethod.BATCH_VIEWS``: BYOL's second view
blurs less and solarizes). Differences from lightly's views: the crop is taken from the image
resized to the input size (lightly crops the original image first; the same for 28-32 px
datasets), crops and rotations are sampled bilinearly (torchvision rotates with the nearest
pixel) at continuous positions, and blur is an exact Gaussian (PIL's is a box approximation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ["BatchViews", "crop_flip_rotate"]

_GROUP_KEYS = (
    "min_scale",
    "hf_prob",
    "rr_prob",
    "rr_degrees",
    "cj_prob",
    "cj_strength",
    "random_gray_scale",
    "gaussian_blur",
    "elastic_prob",
    "elastic_alpha",
    "elastic_sigma",
)
_DEFAULTS = {"min_scale": 0.08, "elastic_alpha": 34.0, "elastic_sigma": 4.0}
_SIGMAS = (0.1, 2.0)  # lightly's default blur standard deviations (pixels)
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights


class BatchViews:
    """Views of a batch of images, made on the images' device.

    Args:
        groups: one augmentation per group (keywords of
            :func:`fedssl.methods.pretrain.augmentation`; ``input_size`` and ``normalize``
            must be the same for every group).
        per_view: one entry per view: ``blur`` (factor on the group's ``gaussian_blur``
            probability, default 1) and ``solarize`` (probability, default 0).

    Call it with ``images`` (``(B, C, H, W)``, ``uint8`` or floats in [0, 1]) and ``groups``
    (``(B,)`` group indices, or ``None`` for group 0): a list of normalised view tensors.
    """

    def __init__(self, groups: Sequence[Mapping], per_view: Sequence[Mapping] = ({}, {})):
        if not groups:
            raise ValueError("BatchViews needs the augmentation of at least one group")
        if not per_view:
            raise ValueError("BatchViews needs at least one view")
        first = groups[0]
        for g in groups[1:]:
            if g["input_size"] != first["input_size"] or g["normalize"] != first["normalize"]:
                raise ValueError("every group's views must have the same size and normalisation")
        self.size = int(first["input_size"])
        norm = first.get("normalize") or {"mean": [0.0], "std": [1.0]}
        self.mean, self.std = list(norm["mean"]), list(norm["std"])
        self.settings = {
            k: [float(_DEFAULTS.get(k, 0.0) if g.get(k) is None else g[k]) for g in groups]
            for k in _GROUP_KEYS
        }
        self.per_view = [
            {"blur": float(v.get("blur", 1.0)), "solarize": float(v.get("solarize", 0.0))}
            for v in per_view
        ]
        self._on: dict[torch.device, tuple] = {}  # the settings as tensors, per device

    def _tensors(
        self, dev: torch.device
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Per-group settings, mean and std on ``dev``, made once (not on every batch)."""
        if dev not in self._on:
            table = {k: torch.tensor(v, device=dev) for k, v in self.settings.items()}
            mean = torch.tensor(self.mean, device=dev).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=dev).view(1, -1, 1, 1)
            self._on[dev] = (table, mean, std)
        return self._on[dev]

    def __call__(
        self, images: torch.Tensor, groups: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(
                f"BatchViews takes (B, C, H, W) images, got shape {tuple(images.shape)}"
            )
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        b, dev = x.shape[0], x.device
        if groups is None:
            groups = torch.zeros(b, dtype=torch.long, device=dev)
        groups = groups.to(dev).long()
        table, mean, std = self._tensors(dev)
        s = {k: v[groups] for k, v in table.items()}
        out = []
        for spec in self.per_view:
            v = _elastic(_geometry(x, s), s)
            v = _color_jitter(v, s)
            v = _grayscale(v, s["random_gray_scale"])
            v = _blur(v, (s["gaussian_blur"] * spec["blur"]).clamp(max=1.0))
            v = _solarize(v, spec["solarize"])
            out.append((v - mean) / std)
        return out


def _chance(p: torch.Tensor) -> torch.Tensor:
    """A per-image coin with probability ``p`` (``(B,)``), as a bool tensor."""
    return torch.rand(p.shape, device=p.device) < p


def _uniform(lo, hi, shape, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, device=device)


def _geometry(x: torch.Tensor, s: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Random resized crop, horizontal flip, rotation: one affine map per image."""
    b, dev = x.shape[0], x.device
    # torchvision's crop parameters: 10 tries of (area, log aspect), the first that fits;
    # the whole image when none does
    tries = 10
    area = _uniform(s["min_scale"][:, None], 1.0, (b, tries), dev)
    log_ratio = _uniform(math.log(3 / 4), math.log(4 / 3), (b, tries), dev)
    w, h = (area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt()
    fits = (w <= 1) & (h <= 1)
    pick = torch.where(fits.any(1), fits.float().argmax(1), torch.zeros_like(fits[:, 0]).long())
    w = torch.where(fits.any(1), w.gather(1, pick[:, None])[:, 0], torch.ones(b, device=dev))
    h = torch.where(fits.any(1), h.gather(1, pick[:, None])[:, 0], torch.ones(b, device=dev))
    # centre in normalised coordinates ([-1, 1]; the crop's half-extent is w, h)
    cx = _uniform(-(1 - w), 1 - w, (b,), dev)
    cy = _uniform(-(1 - h), 1 - h, (b,), dev)
    flip = torch.where(_chance(s["hf_prob"]), -1.0, 1.0)
    angle = _uniform(-s["rr_degrees"], s["rr_degrees"], (b,), dev) * math.pi / 180
    angle = torch.where(_chance(s["rr_prob"]), angle, torch.zeros_like(angle))
    return crop_flip_rotate(x, w, h, cx, cy, flip, angle)


def crop_flip_rotate(
    x: torch.Tensor,
    w: torch.Tensor,
    h: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    flip: torch.Tensor,
    angle: torch.Tensor,
) -> torch.Tensor:
    """Each image's crop (half-extent ``w``, ``h`` and centre ``cx``, ``cy`` in normalised
    coordinates, [-1, 1] being the image), flipped left-right where ``flip`` is -1, rotated
    counter-clockwise by ``angle`` radians (torchvision's sense) and resized to the image size;
    all ``(B,)``. One bilinear sampling of ``x``: the output point p reads the input at
    ``c + diag(w, h) . diag(flip, 1) . R(angle)^-1 . p``, and is black where that point lies
    outside the crop (a rotation's corners)."""
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [
            torch.stack([w * flip * cos, -w * flip * sin, cx], 1),
            torch.stack([h * sin, h * cos, cy], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # black where the rotated crop's corners would show the image around it, as torchvision's
    # rotation of the cropped image fills them
    qx = (grid[..., 0] - cx.view(-1, 1, 1)) / w.view(-1, 1, 1)
    qy = (grid[..., 1] - cy.view(-1, 1, 1)) / h.view(-1, 1, 1)
    inside = (qx.abs() <= 1) & (qy.abs() <= 1)
    return out * inside.unsqueeze(1).to(out.dtype)


def _elastic(x: torch.Tensor, s: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Elastic distortion (Simard et al. 2003) with probability ``elastic_prob``: every pixel
    moves by a random field, uniform in [-1, 1] per pixel and axis, smoothed by a Gaussian of
    ``elastic_sigma`` pixels and scaled by ``elastic_alpha`` pixels."""
    on = _chance(s["elastic_prob"])
    if not on.any():
        return x
    b, _, hgt, wid = x.shape
    sigma = float(s["elastic_sigma"][on].max())
    field = _smooth(torch.rand(b, 2, hgt, wid, device=x.device) * 2 - 1, s["elastic_sigma"], sigma)
    scale = torch.where(on, s["elastic_alpha"], torch.zeros_like(s["elastic_alpha"]))
    field = field * scale.view(-1, 1, 1, 1)
    # pixels to normalised coordinates: the image spans 2 units
    shift = torch.stack([field[:, 0] * 2 / wid, field[:, 1] * 2 / hgt], -1)
    eye = torch.eye(2, 3, device=x.device).expand(b, 2, 3)
    grid = F.affine_grid(eye, list(x.shape), align_corners=False) + shift
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _smooth(x: torch.Tensor, sigma: torch.Tensor, widest: float) -> torch.Tensor:
    """Each image of ``x`` blurred by its own Gaussian (``sigma``: ``(B,)`` pixels), kernels
    ``widest`` sigmas wide at most; edges reflected (replicated on images smaller than that)."""
    b, c, hgt, wid = x.shape
    radius = max(1, math.ceil(3 * widest))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x.dtype)[:, None].clamp(min=1e-3) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b * c, taps)
    flat = x.reshape(1, b * c, hgt, wid)
    mode = "reflect" if min(hgt, wid) > radius else "replicate"
    y = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode=mode), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode=mode), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, hgt, wid)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f.view(-1, 1, 1, 1) * x + (1 - f.view(-1, 1, 1, 1)) * other).clamp(0, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue rotated by ``shift`` (fractions of a turn) per image, through HSV."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        maxc == r,
        ((g - b) / safe) % 6,
        torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0)
    # HSV -> RGB: each channel from its own offset on the hue circle
    k = torch.stack([(5 + hue * 6) % 6, (3 + hue * 6) % 6, (1 + hue * 6) % 6], 1)
    m = torch.minimum(k, 4 - k).clamp(0, 1)
    return maxc.unsqueeze(1) - (maxc * sat).unsqueeze(1) * m


def _color_jitter(x: torch.Tensor, s: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """torchvision's ``ColorJitter(0.8c, 0.8c, 0.8c, 0.2c)`` with probability ``cj_prob``, the
    four adjustments in a random order per image."""
    b, dev = x.shape[0], x.device
    on = _chance(s["cj_prob"])
    if not on.any():
        return x
    c = s["cj_strength"] * 0.8
    factors = [_uniform((1 - c).clamp(min=0), 1 + c, (b,), dev) for _ in range(3)]
    shift = _uniform(-0.2 * s["cj_strength"], 0.2 * s["cj_strength"], (b,), dev)
    order = torch.rand(b, 4, device=dev).argsort(1)
    rgb = x.shape[1] == 3
    for step in range(4):
        op = order[:, step]
        new = x
        for code in range(4):
            use = on & (op == code)
            if not use.any():
                continue
            if code == 0:  # brightness
                y = _blend(x, torch.zeros_like(x), factors[0])
            elif code == 1:  # contrast: towards the image's mean gray level
                y = _blend(x, _gray(x).mean((1, 2, 3), keepdim=True).expand_as(x), factors[1])
            elif code == 2 and rgb:  # saturation: towards the image's gray version
                y = _blend(x, _gray(x).expand_as(x), factors[2])
            elif code == 3 and rgb:
                y = _hue(x, shift)
            else:  # saturation and hue leave one channel as it is
                continue
            new = torch.where(use.view(-1, 1, 1, 1), y, new)
        x = new
    return x


def _grayscale(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1 or not bool((p > 0).any()):
        return x
    return torch.where(_chance(p).view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def _blur(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with probability ``p`` per image, sigma uniform in 0.1-2 pixels."""
    on = _chance(p)
    if not on.any():
        return x
    sigma = _uniform(_SIGMAS[0], _SIGMAS[1], (x.shape[0],), x.device)
    return torch.where(on.view(-1, 1, 1, 1), _smooth(x, sigma, _SIGMAS[1]), x)


def _solarize(x: torch.Tensor, p: float) -> torch.Tensor:
    if p <= 0:
        return x
    on = _chance(torch.full((x.shape[0],), p, device=x.device)).view(-1, 1, 1, 1)
    return torch.where(on & (x >= 0.5), 1.0 - x, x)
