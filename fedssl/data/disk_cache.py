"""Decoded images kept on disk, so that a new process does not decode them again.

The image cache (:mod:`fedssl.data.cache`) lives as long as its process. Processes come and go:
each run, each Ray actor of the simulation engine that meets a client for the first time, and
under Flower's deployment engine (without a site worker) every message. Decoding costs them:
thousands of JPEGs through PIL (Intel scenes, Flowers102), or a gzipped idx file (Fashion-MNIST,
0.3 s). This module keeps the decoded arrays in a folder and hands them to the next process:

* :func:`idx_array` — a gzipped idx file's array, keyed by the file's path, size and
  modification time;
* :func:`load` / :func:`store` — a client's decoded set (``uint8`` images and their labels),
  keyed by the caller's description of it (files with their sizes and times, indices, side).

Files are ``.npy`` arrays written atomically (a temporary file, then ``os.replace``) and read
with ``allow_pickle=False``; a file that cannot be read or does not match is decoded again and
replaced. The folder is ``$FEDSSL_DECODED_CACHE``, else ``$XDG_CACHE_HOME/fedssl/decoded``
(``~/.cache/fedssl/decoded``); ``FEDSSL_DECODED_CACHE=off`` turns it off. Nothing is written
when the folder cannot be (read-only home): the process decodes as it would without it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

__all__ = ["folder", "file_identity", "idx_array", "load", "store"]

log = logging.getLogger(__name__)

#: the environment variable naming the folder (or ``off``)
ENV = "FEDSSL_DECODED_CACHE"
_VERSION = "1"  # part of every key: a new layout never reads an old file
_warned = False


def folder() -> Path | None:
    """The cache folder, or None when ``FEDSSL_DECODED_CACHE=off``."""
    where = os.environ.get(ENV, "")
    if where.lower() == "off":
        return None
    if where:
        return Path(where)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "fedssl" / "decoded"


def file_identity(paths: Iterable[str | Path]) -> str:
    """A digest of files' resolved paths, sizes and modification times: it changes when any
    of them is replaced or edited."""
    h = hashlib.sha1(_VERSION.encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.realpath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _path(kind: str, key: str) -> Path | None:
    root = folder()
    if root is None:
        return None
    digest = hashlib.sha1(f"{_VERSION}\0{key}".encode()).hexdigest()[:24]
    return root / kind / f"{digest}.npy"


def _read(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # truncated, foreign or corrupt: decode again
        log.warning("decoded cache: %s unreadable (%s); decoding again", path, err)
        return None


def _write(path: Path, array: np.ndarray) -> None:
    global _warned
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        if not _warned:
            _warned = True
            log.warning(
                "decoded cache: cannot write %s (%s); images are decoded in every process "
                "(set %s to a writable folder, or to off)",
                path.parent,
                err,
                ENV,
            )


def idx_array(path: Path, read: Callable[[Path], np.ndarray]) -> np.ndarray:
    """``read(path)`` (an idx file's array) through the cache when ``path`` is gzipped; plain
    files are read directly (that is as fast as the cache)."""
    if path.suffix != ".gz":
        return read(path)
    where = _path("idx", f"idx\0{file_identity([path])}")
    if where is None:
        return read(path)
    hit = _read(where)
    if hit is not None:
        return hit
    arr = read(path)
    _write(where, arr)
    return arr


def load(key: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The images and labels stored under ``key``, or None (nothing stored, off, unreadable,
    or not ``n`` images of ``uint8``)."""
    images_at, labels_at = _path("sets", key), _path("sets", key + "\0labels")
    if images_at is None:
        return None
    images, labels = _read(images_at), _read(labels_at)
    if images is None or labels is None:
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != n or len(labels) != n:
        log.warning("decoded cache: %s does not hold %d images; decoding again", images_at, n)
        return None
    return images, labels


def store(key: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Keep ``images`` (``(N, C, S, S)`` ``uint8``) and ``labels`` under ``key`` for the next
    process (labels first: a reader finds the images only once both are there)."""
    images_at, labels_at = _path("sets", key), _path("sets", key + "\0labels")
    if images_at is None:
        return
    _write(labels_at, labels)
    _write(images_at, images)
