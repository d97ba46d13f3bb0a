"""Score saved stage-one backbones again with the kNN monitor, once with the BatchNorm
statistics the merged weights carry (``ssl.knn_bn=merged``) and once with each client's own
(``client``), beside raw pixels: how docs/results/stage-one.md compares the two readouts on
runs that were trained before the choice existed (training does not depend on it).

    python benchmarks/rescore_knn.py runs/pretrain-default [more run directories]
    python benchmarks/rescore_knn.py runs/pretrain-personal --per-class

Each run directory needs its ``config.yaml`` and ``backbone.safetensors`` (what
``launch/pretrain.py`` writes; a run whose clients kept layers, ``ssl.local_layers``, also its
``clients/``: each client is scored on its own backbone); the clients, bank, queries, k and
temperature are the run's own. Prints one markdown row per run: seed, round, then per client
merged / client / raw pixels. ``--per-class`` adds, per run and client, the accuracy on each
class's queries of the backbone (client statistics) and of raw pixels: where one wins.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="stage-one run directories")
    p.add_argument("--bn-images", type=int, help="ssl.knn_bn_images (default: the run's)")
    p.add_argument(
        "--per-class", action="store_true", help="also each class's accuracy, backbone and pixels"
    )
    return p.parse_args(argv)


def rescore(run: Path, bn_images: int | None = None) -> dict:
    """``{"seed", "round", "clients", "classes", "merged": [...], "client": [...],
    "pixels": [...], "client_per_class": [[...], ...], "pixels_per_class": [[...], ...]}``:
    per client, accuracies over all queries and on each class's."""
    import torch

    from fedssl.config import load_config
    from fedssl.data.client_images import client_task
    from fedssl.methods.knn import class_accuracy, top1
    from fedssl.methods.monitor import MonitorSettings, backbone_predictions, pixels_predictions
    from fedssl.methods.pretrain import build_ssl
    from fedssl.models.backbones import load_backbone

    cfg = load_config(run / "config.yaml")
    if bn_images is not None:
        cfg.ssl.knn_bn_images = bn_images
    torch.set_num_threads(max(1, cfg.train.threads))  # as the clients scored: same sums
    out = {"clients": list(cfg.data.clients), "seed": cfg.seed, "classes": []}
    for key in ("merged", "client", "pixels", "client_per_class", "pixels_per_class"):
        out[key] = []
    local = bool(cfg.ssl.local_layers)  # then each client's own: the shared file completed
    shared = None if local else load_backbone(run / "backbone.safetensors")
    for pid, name in enumerate(cfg.data.clients):
        net, meta = load_backbone(run / "backbone.safetensors", name, pid) if local else shared
        if meta.get("backbone") != cfg.model.backbone:
            raise ValueError(f"{run}: backbone {meta.get('backbone')!r} is not the config's")
        out["round"] = meta.get("round")
        module = build_ssl(cfg)
        module.backbone.load_state_dict(net.state_dict())
        for mode in ("merged", "client"):
            cfg.ssl.knn_bn = mode
            pred, labels, n = backbone_predictions(MonitorSettings.of(cfg), pid, module)
            out[mode].append(top1(pred, labels))
        out["client_per_class"].append(class_accuracy(pred, labels, n))
        pred, labels, n = pixels_predictions(MonitorSettings.of(cfg), pid)
        out["pixels"].append(top1(pred, labels))
        out["pixels_per_class"].append(class_accuracy(pred, labels, n))
        out["classes"].append(list(client_task(cfg.data, pid).train.classes))
    return out


def per_class_table(r: dict, pid: int) -> str:
    """Markdown: each class's kNN accuracy, backbone (client statistics) against raw pixels."""
    rows = [
        f"| {c} | {b:.2f} | {p:.2f} | {b - p:+.2f} |"
        for c, b, p in zip(
            r["classes"][pid], r["client_per_class"][pid], r["pixels_per_class"][pid], strict=True
        )
    ]
    head = f"| {r['clients'][pid]} class | backbone | raw pixels | difference |\n|---|---|---|---|"
    return "\n".join([head, *rows])


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
        if args.per_class:
            for pid in range(len(r["clients"])):
                print(f"\n{run}:\n\n{per_class_table(r, pid)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
