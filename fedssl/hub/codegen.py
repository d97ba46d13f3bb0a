"""Regenerate ``hub_pb2.py`` / ``hub_pb2_grpc.py`` from ``hub.proto`` (needs ``grpcio-tools``,
in the ``dev`` extra; the generated files are committed so a runtime install does not need it).

    python -m fedssl.hub.codegen            # rewrite the files in fedssl/hub/
    python -m fedssl.hub.codegen --out DIR  # write them under DIR/fedssl/hub/ instead
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding fedssl/
PROTO = "fedssl/hub/hub.proto"


def generate(out_root: Path) -> list[Path]:
    """Run protoc on ``hub.proto``; return the generated files (under ``out_root/fedssl/hub``)."""
    try:
        from grpc_tools import protoc
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RuntimeError("grpcio-tools is missing: pip install -e '.[dev]'") from err
    import grpc_tools

    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "fedssl" / "hub").mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PACKAGE_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            PROTO,
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    return [out_root / "fedssl" / "hub" / n for n in ("hub_pb2.py", "hub_pb2_grpc.py")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=PACKAGE_ROOT, help="output root")
    args = p.parse_args(argv)
    for f in generate(args.out):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
