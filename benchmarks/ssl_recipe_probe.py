"""Fast SimCLR recipe explorer for stage one (paper 003) on the offline pair.

Centralized SimCLR on both clients' unlabeled images (the stage-one split of
``configs/pretrain/default.yaml``) in a plain torch loop, with the view augmentations, batch size,
temperature and stem given on the command line, then per client:

* kNN accuracy (k=20, t=0.1) with the client's labeled part as the bank, 1,000 test queries;
* a linear probe (standardised frozen features, Adam, 300 full-batch steps) trained on the
  labeled part and scored on the same 1,000 test images.

It is a screening tool, not the federated protocol: the learning rate follows one cosine cycle
over all steps (stage one restarts the optimizer every round) and the colour jitter is
brightness + contrast only. Settings that win here are then run through ``launch/compare.py``.

    python benchmarks/ssl_recipe_probe.py --epochs 4                        # the default recipe
    python benchmarks/ssl_recipe_probe.py --epochs 4 --hf 0 --temp 0.2 --bs 64 \\
        --min-scale 0.4 --rot 15
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument(
        "--stem",
        choices=["default", "nopool", "small"],
        default="default",
        help="ResNet stem: timm's, without max-pool, or 3x3 stride 1 (small_input)",
    )
    p.add_argument("--backbone", default="resnet18", help="timm model name")
    p.add_argument("--hf", type=float, default=0.5, help="horizontal flip probability")
    p.add_argument("--min-scale", type=float, default=0.25, help="RandomResizedCrop lower bound")
    p.add_argument("--cj", type=float, default=0.5, help="colour jitter strength (0: off)")
    p.add_argument("--rot", type=float, default=0.0, help="max rotation in degrees, p=0.5 (0: off)")
    p.add_argument("--temp", type=float, default=0.5, help="NT-Xent temperature")
    p.add_argument("--bs", type=int, default=128, help="batch size")
    p.add_argument("--lr", type=float, default=0.06, help="peak learning rate (SGD, momentum 0.9)")
    p.add_argument("--wd", type=float, default=5e-4, help="weight decay")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--per-client", type=int, default=4000, help="data.max_per_client")
    return p.parse_args(argv)  # fmt: skip


def views(a: argparse.Namespace):
    """Two independently augmented views of an image."""
    import torchvision.transforms as T

    steps = [T.RandomResizedCrop(28, scale=(a.min_scale, 1.0))]
    if a.rot:
        steps.append(T.RandomApply([T.RandomRotation(a.rot)], p=0.5))
    if a.hf:
        steps.append(T.RandomHorizontalFlip(a.hf))
    if a.cj:
        steps.append(T.RandomApply([T.ColorJitter(0.8 * a.cj, 0.8 * a.cj)], p=0.8))
    tf = T.Compose([*steps, T.ToTensor(), T.Normalize([0.5], [0.5])])
    return lambda img: [tf(img), tf(img)]


def linear_probe(bank, bank_y, queries, query_y, num_classes: int) -> float:
    """Accuracy of a linear classifier on standardised frozen features."""
    import torch
    import torch.nn.functional as F

    mu, sd = bank.mean(0), bank.std(0) + 1e-6
    bank, queries = (bank - mu) / sd, (queries - mu) / sd
    lin = torch.nn.Linear(bank.shape[1], num_classes)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3, weight_decay=1e-3)
    for _ in range(300):
        loss = F.cross_entropy(lin(bank), bank_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (lin(queries).argmax(1) == query_y).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from torch.utils.data import ConcatDataset, DataLoader

    from fedssl.config import load_config
    from fedssl.data.tasks import ImageDataset, client_task
    from fedssl.evaluation import extract_features, knn_accuracy
    from fedssl.models.simclr import SimCLR, build_backbone, eval_transform

    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config(
        ROOT / "configs" / "pretrain" / "default.yaml",
        ["tracking.wandb=disabled", f"data.max_per_client={a.per_client}"],
    )
    net = build_backbone(a.backbone, in_chans=1, small_input=a.stem == "small")
    if a.stem == "nopool":
        net.maxpool = torch.nn.Identity()
    module = SimCLR(net, proj_hidden=512, proj_out=128, temperature=a.temp)
    tasks = [client_task(cfg.data, i) for i in range(len(cfg.data.clients))]
    ds = ConcatDataset([ImageDataset(t.train, t.unlabeled, views(a), "L") for t in tasks])
    opt = torch.optim.SGD(module.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.wd)
    steps = len(ds) // a.bs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=a.lr, total_steps=steps * a.epochs, pct_start=0.05
    )
    t0 = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        module.train()
        total = 0.0
        for v, _ in DataLoader(ds, batch_size=a.bs, shuffle=True, drop_last=True):
            loss = module.loss(v)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {epoch}: loss {total / steps:.3f}, {time.perf_counter() - t0:.0f} s",
              flush=True)  # fmt: skip
    train_s = time.perf_counter() - t0
    tf = eval_transform(28, 1)
    scores = {}
    for t in tasks:
        loader = DataLoader(ImageDataset(t.train, t.labeled, tf, "L"), batch_size=500)
        bank, bank_y = extract_features(net, loader)
        qi = np.random.default_rng(0).choice(len(t.test), min(1000, len(t.test)), replace=False)
        queries = DataLoader(ImageDataset(t.test, qi, tf, "L"), batch_size=500)
        q, q_y = extract_features(net, queries)
        with torch.no_grad():
            knn = knn_accuracy(bank, bank_y, q, q_y, t.num_classes, 20, 0.1)
        scores[t.name] = {
            "knn": round(knn, 4),
            "linear": round(linear_probe(bank, bank_y, q, q_y, t.num_classes), 4),
        }
    print(f"[recipe] {json.dumps(vars(a))}\n[recipe] {json.dumps(scores)} train_s={train_s:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
