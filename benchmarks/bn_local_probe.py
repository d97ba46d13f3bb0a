"""Stage two probe: a linear head on the frozen stage-one backbone with the backbone's BatchNorm
statistics as pretrained (merged by FedAvg over all clients) or recomputed on the client's own
images first (kept local, as FedBN/SiloBN do). Prints unlabeled / test Acc@1 per client.

    python benchmarks/bn_local_probe.py runs/pretrain-default        # 25% labels
    python benchmarks/bn_local_probe.py runs/pretrain-default 20     # 20 labels per class
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from fedssl.data.tasks import ImageDataset, client_task
    from fedssl.finetuning import (
        _mode,
        build_classifier,
        evaluate,
        finetune_config,
        fit,
        resolve_backbone,
    )
    from fedssl.models.simclr import eval_transform

    if not argv:
        print(__doc__)
        return 2
    labels = int(argv[1]) if len(argv) > 1 else 0
    cfg, _ = finetune_config(
        ROOT / "configs" / "finetune" / "default.yaml",
        [f"finetune.backbone={argv[0]}", f"finetune.labels_per_class={labels}",
         "tracking.wandb=disabled", "finetune.mode=linear", "finetune.epochs=40"],
    )  # fmt: skip
    path = resolve_backbone(cfg.finetune.backbone, cfg.out_dir)
    for pid in range(len(cfg.data.clients)):
        task = client_task(cfg.data, pid)
        for bn in ("pretrained", "local"):
            module, meta = build_classifier(cfg, task.num_classes, path)
            if bn == "local":
                idx = np.concatenate([task.labeled, task.unlabeled])
                tf = eval_transform(int(meta["image_size"]), int(meta["in_chans"]))
                ds = ImageDataset(task.train, idx, tf, _mode(meta))
                norms = [
                    m
                    for m in module.backbone.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                ]
                for m in norms:
                    m.reset_running_stats()
                    m.momentum = None  # a plain average over every batch
                    m.train()
                with torch.no_grad():
                    for x, _ in DataLoader(ds, batch_size=500):
                        module.backbone(x)
                for m in norms:
                    m.eval()
            fit(module, cfg, task, meta, cfg.finetune.epochs)
            s = evaluate(module, cfg, task, meta)
            unl, test = 100 * s["unlabeled_acc"], 100 * s["test_acc"]
            print(f"[probe] client {pid} {task.name} labels/class={labels or 'all'} bn={bn}: "
                  f"unlabeled {unl:.2f} test {test:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
