"""fedssl's SSL methods, one file each, chosen by ``ssl.method``: the file
``fedssl/methods/ssl/<name>.py`` holds the method's one
:class:`~fedssl.methods.ssl.base.SSLMethod` subclass."""

from __future__ import annotations

from fedssl.config import SSL_METHODS as METHODS

__all__ = ["METHODS", "method_class"]


def method_class(name: str):
    """The :class:`~fedssl.methods.ssl.base.SSLMethod` subclass of ``ssl.method`` ``name``
    (its module is imported on use: lightly loads only when needed).

    Raises:
        ValueError: an unknown method.
    """
    import importlib

    from fedssl.methods.ssl.base import SSLMethod

    if name not in METHODS:
        raise ValueError(f"ssl.method: unknown {name!r}; choose one of {', '.join(METHODS)}")
    module = importlib.import_module(f"fedssl.methods.ssl.{name}")
    (cls,) = (
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, SSLMethod) and v.__module__ == module.__name__
    )
    return cls
