"""Score saved stage-one backbones again with the kNN monitor, once with the BatchNorm
statistics the merged weights carry (``ssl.knn_bn=merged``) and once with each client's own
(``client``), beside raw pixels: how docs/pretrain.md compares the two readouts on runs that
were trained before the choice existed (training does not depend on it).

    python benchmarks/rescore_knn.py runs/pretrain-default [more run directories]

Each run directory needs its ``config.yaml`` and ``backbone.safetensors`` (what
``launch/pretrain.py`` writes); the clients, bank, queries, k and temperature are the run's own.
Prints one markdown row per run: seed, round, then per client merged / client / raw pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="stage-one run directories")
    p.add_argument("--bn-images", type=int, help="ssl.knn_bn_images (default: the run's)")
    return p.parse_args(argv)


def rescore(run: Path, bn_images: int | None = None) -> dict:
    """``{"seed", "round", "clients", "merged": [...], "client": [...], "pixels": [...]}``."""
    import torch

    from fedssl.config import load_config
    from fedssl.methods.pretrain import backbone_knn, build_ssl, pixels_knn
    from fedssl.models.backbones import load_backbone

    cfg = load_config(run / "config.yaml")
    if bn_images is not None:
        cfg.ssl.knn_bn_images = bn_images
    net, meta = load_backbone(run / "backbone.safetensors")
    if meta.get("backbone") != cfg.model.backbone:
        raise ValueError(f"{run}: backbone {meta.get('backbone')!r} is not the config's")
    torch.set_num_threads(max(1, cfg.train.threads))  # as the clients scored: same sums
    module = build_ssl(cfg)
    module.backbone.load_state_dict(net.state_dict())
    out = {"seed": cfg.seed, "round": meta.get("round"), "clients": list(cfg.data.clients)}
    pids = range(len(cfg.data.clients))
    for mode in ("merged", "client"):
        cfg.ssl.knn_bn = mode
        out[mode] = [backbone_knn(cfg, p, module) for p in pids]
    out["pixels"] = [pixels_knn(cfg, p) for p in pids]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [
        str(r / f)
        for r in args.runs
        for f in ("config.yaml", "backbone.safetensors")
        if not (r / f).is_file()
    ]
    if missing:
        print(f"error: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    header = None
    for run in args.runs:
        r = rescore(run, args.bn_images)
        if header is None:
            cols = [f"{c} (merged / client / pixels)" for c in r["clients"]]
            header = f"| run | seed | round | {' | '.join(cols)} |"
            print(header + "\n|" + "---|" * (3 + len(cols)), flush=True)
        cells = [
            f"{m:.3f} / {c:.3f} / {p:.3f}"
            for m, c, p in zip(r["merged"], r["client"], r["pixels"], strict=True)
        ]
        print(f"| {run} | {r['seed']} | {r['round']} | {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
