"""Weights as files named by their SHA-256 (faster than rows for 100 MB models): written and
flushed before the row naming them commits, hash-checked whenever read.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from fedssl.hub import weights as W
from fedssl.hub.errors import (
    DataLoss,
)

__all__ = ["BlobError", "BlobFiles", "StagedBlob", "default_blob_dir"]


class BlobError(DataLoss):
    """A stored blob file is missing or no longer matches its hash (the store was damaged)."""


class BlobFiles:
    """Content-addressed weights files: ``<root>/<sha[:2]>/<sha256>``.

    ``put`` writes to a temporary file in the same folder, flushes it to disk (unless
    ``fsync=False``) and renames it into place, so a reader never sees half a file and a crash
    leaves either nothing or the whole blob. Identical bytes are stored once. Files no row names
    any more (a replaced contribution's, or one whose transaction failed) are removed by
    :meth:`Store.collect_garbage`.
    """

    def __init__(self, root: str | os.PathLike, fsync: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise BlobError(f"not a blob name: {sha!r}")
        return self.root / sha[:2] / sha

    def put(self, data: bytes | bytearray, sha: str) -> Path:
        """Store ``data`` (whose SHA-256 is ``sha``) unless an intact copy is already there."""
        return self.stage(data, sha, background=False).commit()

    def stage(self, data: bytes | bytearray, sha: str, background: bool = True) -> StagedBlob:
        """Start writing ``data`` to a temporary file beside its final place (in a thread, with
        ``background``: the caller checks the bytes meanwhile). Nothing is visible until
        :meth:`StagedBlob.commit`; :meth:`StagedBlob.discard` removes the temporary file."""
        return StagedBlob(self, data, sha, background)

    def get(self, sha: str, size: int) -> bytearray:
        """The blob's bytes (a ``bytearray``), checked against its size and hash."""
        path = self.path(sha)
        try:
            buf = bytearray(size)
            with open(path, "rb") as f:
                got = f.readinto(buf)
                extra = f.read(1)
        except FileNotFoundError:
            raise BlobError(f"blob {sha} is missing from {self.root}") from None
        if got != size or extra or W.sha256(buf) != sha:
            raise BlobError(f"blob {path} is damaged (size or SHA-256 differs from its record)")
        return buf

    def names(self) -> set[str]:
        return {p.name for p in self.root.glob("??/*") if not p.name.startswith(".tmp-")}


class StagedBlob:
    """A blob file being written (see :meth:`BlobFiles.stage`); commit or discard it once."""

    def __init__(self, files: BlobFiles, data: bytes | bytearray, sha: str, background: bool):
        self.path, self.tmp, self._error = files.path(sha), None, None
        self._thread = None
        if self.path.is_file() and self.path.stat().st_size == len(data):
            return  # identical bytes are stored already
        self.path.parent.mkdir(exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
        if background:  # file writes and fsync release the GIL
            self._thread = threading.Thread(
                target=self._write, args=(fd, data, files.fsync), name="blob-writer", daemon=True
            )
            self._thread.start()
        else:
            self._write(fd, data, files.fsync)

    def _write(self, fd: int, data, fsync: bool) -> None:
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException as err:  # re-raised by commit()
            self._error = err

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def commit(self) -> Path:
        """Wait for the write, then move the file into place (atomically)."""
        self._wait()
        if self.tmp is None:
            os.utime(self.path)  # fresh again: collect_garbage spares files just (re)used
            return self.path
        try:
            if self._error is not None:
                raise self._error
            os.replace(self.tmp, self.path)
        except BaseException:
            Path(self.tmp).unlink(missing_ok=True)
            raise
        finally:
            self.tmp = None
        return self.path

    def discard(self) -> None:
        """Wait for the write and remove the temporary file: nothing stays behind."""
        self._wait()
        if self.tmp is not None:
            Path(self.tmp).unlink(missing_ok=True)
            self.tmp = None


def default_blob_dir(url: str) -> str | None:
    """``<db>.blobs`` beside a SQLite database file; None (blobs in rows) otherwise."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///:memory:",):
        return None
    db = Path(url.removeprefix("sqlite:///").split("?")[0])
    return str(db.with_name(db.name.removesuffix(".db") + ".blobs"))
