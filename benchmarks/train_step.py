"""Seconds per training step of the stage-two classifier on this CPU: weight layout and threads.

    python benchmarks/train_step.py                 # ResNet-18, 28 px grayscale, batch 128
    python benchmarks/train_step.py --backbone resnet50 --size 64 --chans 3 --batch 32

Times, in turns (one step of each variant per pass, median over passes, so a busy spell of the
machine weighs on all alike), full fine-tuning steps (forward, backward, SGD) with the weights
in the usual (NCHW) layout and in channels-last, the layout ``fedssl.finetuning.channels_last``
trains in. Prints one line per variant and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--chans", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=20)
    a = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from fedssl.models.classifier import BackboneClassifier
    from fedssl.models.simclr import build_backbone

    torch.set_num_threads(a.threads)
    x = torch.randn(a.batch, a.chans, a.size, a.size)
    y = torch.randint(0, 10, (a.batch,))
    runs = {}
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    for layout, memory_format in layouts.items():
        torch.manual_seed(0)
        m = BackboneClassifier(build_backbone(a.backbone, in_chans=a.chans), 10, mode="full")
        m.to(memory_format=memory_format)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        runs[layout] = (m.train(), opt, [])

    def step(m, opt):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(a.passes + 2):
        for m, opt, times in runs.values():
            t = time.perf_counter()
            step(m, opt)
            if i >= 2:  # two warm-up passes
                times.append(time.perf_counter() - t)
    med = {k: statistics.median(v[2]) for k, v in runs.items()}
    what = f"{a.backbone} {a.chans}x{a.size}x{a.size}, batch {a.batch}, {a.threads} threads"
    for k, v in med.items():
        print(f"[train_step] {what}: {k:14s} {v:.3f} s/step")
    print(f"[train_step] channels_last speed-up: {med['contiguous'] / med['channels_last']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
