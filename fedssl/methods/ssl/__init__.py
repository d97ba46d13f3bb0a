"""fedssl's SSL methods, one file each, chosen by ``ssl.method`` (:data:`METHODS`)."""

from __future__ import annotations

__all__ = ["METHODS", "method_class"]

#: ``ssl.method`` -> ``module:class`` (imported on use: lightly is loaded only when needed)
METHODS = {
    "simclr": "simclr:SimCLR",
    "byol": "byol:BYOL",
    "simsiam": "simsiam:SimSiam",
    "moco": "moco:MoCo",
    "vicreg": "vicreg:VICReg",
    "barlowtwins": "barlowtwins:BarlowTwins",
    "dino": "dino:DINO",
}


def method_class(name: str):
    """The :class:`~fedssl.methods.ssl.base.SSLMethod` subclass of ``ssl.method`` ``name``.

    Raises:
        ValueError: an unknown method.
    """
    import importlib

    if name not in METHODS:
        raise ValueError(f"ssl.method: unknown {name!r}; choose one of {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(f"fedssl.methods.ssl.{module}"), cls)
