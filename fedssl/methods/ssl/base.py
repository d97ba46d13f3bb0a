"""What every SSL method of fedssl shares: a LightningModule around a backbone (any timm name,
a small-image ``sresnet``, or an ``nn.Module`` with ``num_features``), its optimizer, its named
**parts** (what may travel to the server, what stays on the client) and its views.

A method subclass sets:

* ``name``; ``PARTS``: part name -> the child modules it holds (``backbone``,
  ``projection_head``, ``prediction_head``, ``target``: momentum networks); ``LOCAL_ONLY``:
  parts that never leave a client whatever the config says (queues, centers: statistics of the
  client's own images); ``TRAVELS``: the parts merged by default;
* its recipe: the keyword defaults of its ``__init__`` (the one place they live; the config
  overrides only what it sets, see :func:`fedssl.methods.pretrain.build_ssl`);
* ``TRAIN``: the optimizer settings it trains with (applied by the frontier benchmark and
  listed in the README; a config sets ``train.*`` itself);
* ``loss(views)``; ``after_step()`` for momentum updates; ``views(**aug)``: lightly's transform
  of the method for the configured augmentation.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from fedssl.methods.optim import check_optimizer, make_optimizer
from fedssl.models.backbones import build_backbone

__all__ = ["SSLMethod", "MomentumTarget", "momentum_copy", "recipe"]


#: the optimizer of the methods whose loss diverges at SimCLR's SGD 0.06 (VICReg, Barlow Twins,
#: DINO): AdamW as their papers' recipes train, at a rate the small-image backbones take
ADAMW_RECIPE: dict[str, object] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}


class SSLMethod(pl.LightningModule):
    """Base of the SSL methods (see the module docstring).

    Args:
        backbone: a model name (:func:`fedssl.models.backbones.build_backbone`) or an
            ``nn.Module`` with ``num_features``.
        in_chans: image channels (for a backbone given by name).
        small_input: ResNet stem for small images (for a timm backbone given by name).
        optimizer: ``sgd`` (momentum 0.9), ``adam`` or ``adamw``.
        lr: learning rate (a federated round sets its own, see :func:`fedssl.config.round_lr`).
        weight_decay: L2 penalty.
    """

    name: ClassVar[str] = ""
    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "backbone": ("backbone",),
        "projection_head": ("projection_head",),
    }
    LOCAL_ONLY: ClassVar[tuple[str, ...]] = ()
    TRAVELS: ClassVar[tuple[str, ...]] = ("backbone", "projection_head")
    #: the optimizer settings the method trains with on the default data (``train.*``; empty:
    #: the config's). Loss scales differ: VICReg and Barlow Twins diverge at SimCLR's SGD 0.06.
    TRAIN: ClassVar[dict[str, object]] = {}
    #: batched views (``ssl.views: batched``): per view, the factor on the blur probability and
    #: the solarization probability (:class:`~fedssl.methods.ssl.batch_views.BatchViews`);
    #: ``None``: the method's views cannot be batched (DINO's multi-crop)
    BATCH_VIEWS: ClassVar[tuple[dict[str, float], ...] | None] = ({}, {})

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        in_chans: int = 3,
        small_input: bool = False,
        optimizer: str = "sgd",
        lr: float = 0.06,
        weight_decay: float = 5e-4,
    ):
        super().__init__()
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, in_chans=in_chans, small_input=small_input)
        if not hasattr(backbone, "num_features"):
            raise ValueError("backbone must expose num_features (timm models do)")
        check_optimizer(optimizer)
        self.backbone = backbone
        self.backbone_in_chans = in_chans
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        #: makes the views of a batch of images on its device (``ssl.views: batched``); ``None``:
        #: batches arrive as views (lightly's transforms in the loader)
        self.view_maker = None

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, num_features)``."""
        return self.backbone(x)

    # -- training ----------------------------------------------------------------------------
    def loss(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimizer step (momentum networks update here)."""

    def training_step(self, batch, batch_idx):
        """The method's loss on one batch of views (or of images and their client indices, made
        into views here by :attr:`view_maker`); logs ``train_loss``."""
        views = batch[0]
        if isinstance(views, torch.Tensor):
            if self.view_maker is None:
                raise RuntimeError(
                    "a batch of images arrived but the module has no view_maker "
                    "(ssl.views: batched builds one: fedssl.methods.pretrain.build_ssl)"
                )
            views = self.view_maker(views, batch[1])
        loss = self.loss(views)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(views[0]))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.after_step()

    def configure_optimizers(self):
        """The configured optimizer over the parameters that train (momentum networks do not)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return make_optimizer(self.optimizer_name, params, self.lr, 0.9, self.weight_decay)

    # -- parts -------------------------------------------------------------------------------
    @classmethod
    def check_travel(cls, parts: Sequence[str]) -> tuple[str, ...]:
        """The parts that travel (``parts``, or the method's default when empty), checked.

        Raises:
            ValueError: an unknown part, a local-only part, or no backbone.
        """
        parts = tuple(parts) or cls.TRAVELS
        unknown = [p for p in parts if p not in cls.PARTS]
        if unknown:
            raise ValueError(
                f"ssl.travel: {cls.name} has no part {unknown[0]!r}; its parts: "
                f"{', '.join(cls.PARTS)}"
            )
        local = [p for p in parts if p in cls.LOCAL_ONLY]
        if local:
            raise ValueError(f"ssl.travel: {cls.name}'s {local[0]!r} never leaves a client")
        if "backbone" not in parts:
            raise ValueError("ssl.travel must include the backbone (the model being shared)")
        return parts

    @classmethod
    def prefixes(cls, parts: Sequence[str]) -> tuple[str, ...]:
        """State-dict prefixes of these parts."""
        return tuple(f"{m}." for p in parts for m in cls.PARTS[p])

    def local_extra(self) -> dict[str, torch.Tensor]:
        """Client state that is not in ``state_dict`` (e.g. a lightly memory bank's queue)."""
        return {}

    def load_local_extra(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`local_extra` returned."""

    def start_local_parts(self) -> None:
        """A client's first participation: its local networks start from the received ones
        (e.g. a momentum encoder copies the online encoder)."""

    # -- views -------------------------------------------------------------------------------
    @classmethod
    def views(cls, **aug):
        """lightly's view transform of this method for the configured augmentation (keywords of
        :func:`fedssl.methods.views.augmentation`)."""
        from lightly.transforms import SimCLRTransform

        return SimCLRTransform(**aug)


class MomentumTarget:
    """Mixin of the methods with a momentum target (``backbone_momentum`` and
    ``projection_head_momentum``, EMA coefficient ``target_momentum``): BYOL, MoCo, DINO."""

    def after_step(self) -> None:
        """The target follows the online network by EMA after every step (lightly's
        ``update_momentum``)."""
        from lightly.models.utils import update_momentum

        update_momentum(self.backbone, self.backbone_momentum, self.target_momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, self.target_momentum)

    def start_local_parts(self) -> None:
        """On a client's first participation the target starts as the received online network."""
        from lightly.models.utils import update_momentum

        update_momentum(self.backbone, self.backbone_momentum, 0.0)
        update_momentum(self.projection_head, self.projection_head_momentum, 0.0)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` (a momentum / target network)."""
    from lightly.models.utils import deactivate_requires_grad

    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


def recipe(cls: type[SSLMethod]) -> dict[str, object]:
    """A method's recipe: its ``__init__`` keyword defaults beyond the base class's."""
    base = set(inspect.signature(SSLMethod.__init__).parameters)
    return {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if k not in base and p.default is not inspect.Parameter.empty
    }
