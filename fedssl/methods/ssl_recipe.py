"""The SSL method a config describes: its recipe settings (the method's keyword defaults, with
the config's values on top), the optimizer it trains with, the backbone's input channels, and
which of a module's weights each client keeps (``ssl.local_layers``). The module itself is
:func:`fedssl.methods.pretrain.build_ssl`."""

from __future__ import annotations

import warnings

import torch

from fedssl.config import ExperimentConfig
from fedssl.data.client_images import task_in_chans
from fedssl.methods.ssl import method_class
from fedssl.methods.ssl.base import SSLMethod, recipe

__all__ = [
    "model_in_chans",
    "method_settings",
    "local_layer_keys",
]


def model_in_chans(cfg: ExperimentConfig) -> int:
    """The backbone's input channels: ``model.in_chans``, or (0) the most any client's data has."""
    return cfg.model.in_chans or task_in_chans(cfg.data)


#: config fields that set a method's recipe argument of the same name
_RECIPE_FIELDS = {
    "model": ("proj_hidden", "proj_out", "proj_layers", "pred_hidden"),
    "ssl": (
        "temperature",
        "target_momentum",
        "queue_size",
        "prototypes",
        "teacher_temperature",
        "head_batch_norm",
        "local_views",
        "redundancy_weight",
    ),
}


def method_settings(cfg: ExperimentConfig, warn: bool = True) -> dict:
    """The configured method's recipe with the config's settings applied.

    A setting the method does not have (e.g. the default config's SimCLR ``ssl.temperature``
    under ``--set ssl.method=byol``) is ignored, with a warning naming the method's settings;
    an optimizer other than the one the method trains with (its ``TRAIN``) is warned about
    with the settings to add. ``warn=False``: no warnings (builders: :func:`check_ssl`, which a
    launcher runs once before anything starts, has said it already).

    Raises:
        ValueError: a travelling part the method does not have, or FedU without a travelling
            prediction head.
    """
    cls = method_class(cfg.ssl.method)
    settings = recipe(cls)
    for section, names in _RECIPE_FIELDS.items():
        for name in names:
            value = getattr(getattr(cfg, section), name)
            if value is None:
                continue
            if name not in settings:
                # e.g. the default config's SimCLR temperature under --set ssl.method=byol
                if warn:
                    warnings.warn(
                        f"{section}.{name}={value} does not apply to ssl.method={cls.name} and is "
                        f"ignored (its settings: {', '.join(settings)})",
                        UserWarning,
                        stacklevel=2,
                    )
                continue
            settings[name] = value
    if warn:
        _check_train_recipe(cfg, cls)
    parts = cls.check_travel(cfg.ssl.travel)
    if cfg.ssl.client_update == "fedu" and "prediction_head" not in parts:
        raise ValueError(
            f"ssl.client_update=fedu updates a travelling prediction head; {cls.name} sends none "
            "(use byol or simsiam, or add prediction_head to ssl.travel)"
        )
    return settings


def _check_train_recipe(cfg: ExperimentConfig, cls) -> None:
    """Warn when the method names an optimizer (its ``TRAIN``) and the config trains with
    another: VICReg, Barlow Twins and DINO diverge at SimCLR's SGD 0.06, so
    ``--set ssl.method=vicreg`` on an SGD config would quietly train a useless backbone. A
    config that sets the method's optimizer (any rate) is taken as deliberate."""
    want = dict(cls.TRAIN)
    if not want or cfg.train.optimizer == want.get("optimizer", cfg.train.optimizer):
        return
    recipe_text = " ".join(f"{k}={v}" for k, v in want.items())
    fix = " ".join(f"train.{k}={v}" for k, v in want.items())
    warnings.warn(
        f"ssl.method={cls.name} trains with {recipe_text} (its recipe, "
        f"{cls.__module__}.{cls.__name__}.TRAIN); this run uses train.optimizer="
        f"{cfg.train.optimizer} train.lr={cfg.train.lr}, at which it may not learn. "
        f"To use the recipe: --set {fix}",
        UserWarning,
        stacklevel=3,
    )


def local_layer_keys(cfg: ExperimentConfig, module: SSLMethod) -> frozenset[str]:
    """State-dict keys of ``module`` (``backbone.`` ...) in the backbone layers each client
    keeps (``ssl.local_layers``): ``batchnorm`` names every BatchNorm layer of the backbone, any
    other entry a module of the backbone and everything under it.

    Raises:
        ValueError: an entry that names no module of the backbone, or entries that cover all of
            it (nothing of the backbone would be shared).
    """
    names = cfg.ssl.local_layers
    if not names:
        return frozenset()
    modules = dict(module.backbone.named_modules())
    prefixes = []
    for name in names:
        if name == "batchnorm":
            found = [
                n
                for n, m in modules.items()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            ]
            if not found:
                raise ValueError(f"ssl.local_layers: {cfg.model.backbone} has no BatchNorm layer")
            prefixes += [f"backbone.{n}." for n in found]
        elif name in modules and name:
            prefixes.append(f"backbone.{name}.")
        else:
            top = [n for n in modules if n and "." not in n]
            raise ValueError(
                f"ssl.local_layers: {cfg.model.backbone} has no module {name!r} (use "
                f"'batchnorm' or a module name, e.g. one of {', '.join(top)})"
            )
    sd_keys = module.state_dict().keys()
    keys = frozenset(k for k in sd_keys if k.startswith(tuple(prefixes)))
    if all(k in keys for k in sd_keys if k.startswith("backbone.")):
        raise ValueError(
            f"ssl.local_layers {names} keep the whole backbone on the clients: nothing would be "
            "shared"
        )
    return keys
