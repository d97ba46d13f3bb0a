"""SSL views made from a whole batch at once, on the batch's device (``ssl.views: batched``).

lightly's transforms make each view from a PIL image in the data loader's workers: on a 2-CPU
machine that is about a quarter of a training step, and on a GPU the CPU workers become the
bottleneck. Here the loader only delivers the images (``uint8``, resized and centre-cropped to
the input size) and every view is made by tensor operations on the device the batch lands on:

* random resized crop (area ``min_scale``-1, aspect 1/``crop_ratio``-``crop_ratio``, by
  default torchvision's 3/4-4/3), horizontal flip and rotation,
  composed into **one** affine map per image and sampled bilinearly once (``affine_grid`` /
  ``grid_sample``; a rotation's corners are black, as torchvision's). This is fedssl's own
  (:func:`crop_flip_rotate`, pinned to torchvision's ``resized_crop`` / ``rotate`` by tests):
  kornia's ``RandomResizedCrop`` and ``RandomRotation`` would resample the 28 px image twice;
* then kornia's augmentations (``kornia.augmentation``, per-image parameters on the batch's
  device), one pipeline per group and view: elastic distortion with probability
  ``elastic_prob`` (``RandomElasticTransform``; Simard et al. 2003: a random field smoothed by
  ``elastic_sigma`` px and scaled by ``elastic_alpha`` px; off by default, and only here:
  lightly has none), colour jitter with probability ``cj_prob`` (``ColorJitter`` with
  torchvision's factors: brightness, contrast, saturation 0.8 x ``cj_strength``, hue 0.2 x
  ``cj_strength``; saturation and hue are left out on one-channel images, where torchvision's
  leave them unchanged), random grayscale, Gaussian blur (sigma 0.1-2 px, the probability scaled
  per view), solarization (pixels >= 0.5 inverted) and the normalisation.

The settings are the keywords of :func:`fedssl.methods.views.augmentation`, one set per
**group** (a client: a centralized batch mixes clients with different views), and each method
says per view how its blur and solarization differ (``SSLMethod.BATCH_VIEWS``: BYOL's second view
blurs less and solarizes). Differences from lightly's views: the crop is taken from the image
resized to the input size (lightly crops the original image first; the same for 28-32 px
datasets; ``data.cache_side`` > 1 keeps JPEGs larger than the input, and the crop is then
sampled from that larger image straight to the input size), crops and rotations are sampled
bilinearly (torchvision rotates with the nearest
pixel) at continuous positions, blur is an exact Gaussian (PIL's is a box approximation), and
kornia draws the colour jitter's order once per batch (torchvision once per image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

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
    "crop_ratio",
)
_GEOMETRY_KEYS = ("min_scale", "hf_prob", "rr_prob", "rr_degrees", "crop_ratio")
_DEFAULTS = {"min_scale": 0.08, "elastic_alpha": 34.0, "elastic_sigma": 4.0, "crop_ratio": 4 / 3}
_SIGMAS = (0.1, 2.0)  # lightly's default blur standard deviations (pixels)


class BatchViews:
    """Views of a batch of images, made on the images' device.

    Args:
        groups: one augmentation per group (keywords of
            :func:`fedssl.methods.views.augmentation`; ``input_size`` and ``normalize``
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
        self.groups = len(groups)
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
        self._geometry: dict[torch.device, dict[str, torch.Tensor]] = {}  # per device
        self._pipes: dict[tuple[int, torch.device], list[list[nn.Module]]] = {}

    def _settings_on(self, dev: torch.device) -> dict[str, torch.Tensor]:
        """The groups' geometry settings as tensors on ``dev``, made once (not every batch)."""
        if dev not in self._geometry:
            self._geometry[dev] = {
                k: torch.tensor(self.settings[k], device=dev) for k in _GEOMETRY_KEYS
            }
        return self._geometry[dev]

    def pipelines(self, channels: int, dev: torch.device) -> list[list[nn.Module]]:
        """kornia's augmentations after the geometry: ``[group][view]``, made once per channel
        count and device."""
        key = (channels, dev)
        if key not in self._pipes:
            self._pipes[key] = [
                [self._pipeline(g, spec, channels, dev) for spec in self.per_view]
                for g in range(self.groups)
            ]
        return self._pipes[key]

    def _pipeline(
        self, g: int, spec: Mapping[str, float], channels: int, dev: torch.device
    ) -> nn.Module:
        s = {k: v[g] for k, v in self.settings.items()}
        steps: list[nn.Module] = []
        if s["elastic_prob"] > 0:
            sigma = s["elastic_sigma"]
            taps = 2 * max(1, math.ceil(3 * sigma)) + 1
            alpha = 2 * s["elastic_alpha"] / self.size  # pixels -> normalised coordinates
            elastic = K.RandomElasticTransform(
                (taps, taps), (sigma, sigma), (alpha, alpha), p=min(1.0, s["elastic_prob"])
            )
            # its field is one random number per pixel: drawn on the batch's device, not on
            # the CPU and copied (kornia draws the other steps' few parameters on the CPU)
            elastic.set_rng_device_and_dtype(dev, torch.float32)
            steps.append(elastic)
        c = s["cj_strength"]
        if s["cj_prob"] > 0 and c > 0:
            rgb = channels == 3  # saturation and hue leave a single channel as it is
            steps.append(
                K.ColorJitter(
                    0.8 * c,
                    0.8 * c,
                    0.8 * c if rgb else 0.0,
                    0.2 * c if rgb else 0.0,
                    p=min(1.0, s["cj_prob"]),
                )
            )
        if s["random_gray_scale"] > 0 and channels == 3:
            steps.append(K.RandomGrayscale(p=min(1.0, s["random_gray_scale"])))
        blur = min(1.0, s["gaussian_blur"] * spec["blur"])
        if blur > 0:
            taps = 2 * math.ceil(3 * _SIGMAS[1]) + 1
            steps.append(K.RandomGaussianBlur((taps, taps), _SIGMAS, p=blur))
        if spec["solarize"] > 0:
            steps.append(K.RandomSolarize(0.0, 0.0, p=min(1.0, spec["solarize"])))
        mean, std = self.mean * channels, self.std * channels
        steps.append(K.Normalize(torch.tensor(mean[:channels]), torch.tensor(std[:channels])))
        return nn.Sequential(*steps).to(dev)

    def __call__(
        self, images: torch.Tensor, groups: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(
                f"BatchViews takes (B, C, H, W) images, got shape {tuple(images.shape)}"
            )
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        larger = x.shape[-2] == x.shape[-1] > self.size  # crops read it at its own resolution
        if x.shape[-2:] != (self.size, self.size) and not larger:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        dev = x.device
        if groups is None:
            groups = torch.zeros(x.shape[0], dtype=torch.long, device=dev)
        groups = groups.to(dev).long()
        table = self._settings_on(dev)
        s = {k: v[groups] for k, v in table.items()}
        pipes = self.pipelines(x.shape[1], dev)
        present = groups.unique().tolist()
        out = []
        for view in range(len(self.per_view)):
            v = _geometry(x, s, self.size)
            if len(present) == 1:
                v = pipes[present[0]][view](v)
            else:  # each group's rows through its own pipeline
                done = torch.empty_like(v)
                for g in present:
                    rows = (groups == g).nonzero().squeeze(1)
                    done[rows] = pipes[g][view](v[rows])
                v = done
            out.append(v)
        return out


def _chance(p: torch.Tensor) -> torch.Tensor:
    """A per-image coin with probability ``p`` (``(B,)``), as a bool tensor."""
    return torch.rand(p.shape, device=p.device) < p


def _uniform(lo, hi, shape, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, device=device)


def _geometry(x: torch.Tensor, s: Mapping[str, torch.Tensor], size: int) -> torch.Tensor:
    """Random resized crop, horizontal flip, rotation: one affine map per image, sampled at
    ``size`` x ``size``."""
    b, dev = x.shape[0], x.device
    # torchvision's crop parameters: 10 tries of (area, log aspect), the first that fits;
    # the whole image when none does
    tries = 10
    area = _uniform(s["min_scale"][:, None], 1.0, (b, tries), dev)
    top = s["crop_ratio"].log()[:, None]
    log_ratio = _uniform(-top, top, (b, tries), dev)
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
    return crop_flip_rotate(x, w, h, cx, cy, flip, angle, size)


def crop_flip_rotate(
    x: torch.Tensor,
    w: torch.Tensor,
    h: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    flip: torch.Tensor,
    angle: torch.Tensor,
    size: int | None = None,
) -> torch.Tensor:
    """Each image's crop (half-extent ``w``, ``h`` and centre ``cx``, ``cy`` in normalised
    coordinates, [-1, 1] being the image), flipped left-right where ``flip`` is -1, rotated
    counter-clockwise by ``angle`` radians (torchvision's sense) and resized to ``size`` x
    ``size`` (default: the image's own size); all ``(B,)``. One bilinear sampling of ``x``:
    the output point p reads the input at ``c + diag(w, h) . diag(flip, 1) . R(angle)^-1 . p``,
    and is black where that point lies outside the crop (a rotation's corners)."""
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [
            torch.stack([w * flip * cos, -w * flip * sin, cx], 1),
            torch.stack([h * sin, h * cos, cy], 1),
        ],
        1,
    )
    shape = list(x.shape) if size is None else [x.shape[0], x.shape[1], size, size]
    grid = F.affine_grid(theta, shape, align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # black where the rotated crop's corners would show the image around it, as torchvision's
    # rotation of the cropped image fills them
    qx = (grid[..., 0] - cx.view(-1, 1, 1)) / w.view(-1, 1, 1)
    qy = (grid[..., 1] - cy.view(-1, 1, 1)) / h.view(-1, 1, 1)
    inside = (qx.abs() <= 1) & (qy.abs() <= 1)
    return out * inside.unsqueeze(1).to(out.dtype)
