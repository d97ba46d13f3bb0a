"""Image transforms shared by every stage: normalisation per channel count, the deterministic
evaluation transform, stage two's training augmentation, and the PIL mode for a channel count.
(SSL views are each method's own: see :mod:`fedssl.methods.ssl`.)
"""

from __future__ import annotations

__all__ = ["normalize", "eval_transform", "train_transform", "pil_mode"]


def normalize(in_chans: int) -> dict[str, list[float]]:
    """Mean and std per channel: 0.5/0.5 for one channel, ImageNet's for three."""
    if in_chans == 1:
        return {"mean": [0.5], "std": [0.5]}
    return {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def pil_mode(in_chans: int) -> str:
    """The PIL mode images are converted to for a backbone with ``in_chans`` channels."""
    return "RGB" if int(in_chans) == 3 else "L"


def eval_transform(image_size: int, in_chans: int):
    """Deterministic transform for feature extraction (resize, tensor, same normalisation)."""
    import torchvision.transforms as T

    norm = normalize(in_chans)
    return T.Compose(
        [
            T.Resize(image_size),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(norm["mean"], norm["std"]),
        ]
    )


def train_transform(image_size: int, in_chans: int, augment: str):
    """Stage two's training transform: ``none`` (the evaluation transform), ``crop`` (random
    resized crop, scale 0.6-1) or ``crop_flip`` (plus a horizontal flip)."""
    import torchvision.transforms as T

    if augment == "none":
        return eval_transform(image_size, in_chans)
    steps = [T.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True)]
    if augment == "crop_flip":
        steps.append(T.RandomHorizontalFlip())
    norm = normalize(in_chans)
    return T.Compose([*steps, T.ToTensor(), T.Normalize(norm["mean"], norm["std"])])
