"""Seconds per training step on this CPU in the usual (NCHW) and the channels-last layout.

    python benchmarks/train_step.py                 # stage two: ResNet-18, 28 px gray, batch 128
    python benchmarks/train_step.py --model simclr --batch 64 --threads 1   # a stage-one client
    python benchmarks/train_step.py --model paper_cnn --batch 32 --threads 1  # papers 000/001
    python benchmarks/train_step.py --backbone resnet50 --size 64 --chans 3 --batch 32

Times, in turns (one step of each variant per pass, median over passes, so a busy spell of the
machine weighs on all alike), training steps (forward, backward, SGD) with the weights in the
usual layout and in channels-last, the layout ``fedssl.runtime.layout`` trains in by default
(``runtime.channels_last``). Models: ``classifier`` (stage two's full fine-tuning), ``simclr``
(stage one's SimCLR step on two views of each image) and ``paper_cnn`` (the merge papers' CNN).
Prints one line per variant and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=["classifier", "simclr", "paper_cnn"], default="classifier")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--chans", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=20)
    a = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from fedssl.methods.heads import BackboneClassifier
    from fedssl.methods.ssl.simclr import SimCLR
    from fedssl.models.backbones import build_backbone
    from fedssl.models.small import build_small_model

    torch.set_num_threads(a.threads)
    x = torch.randn(a.batch, a.chans, a.size, a.size)
    y = torch.randint(0, 10, (a.batch,))
    views = [torch.randn_like(x), torch.randn_like(x)]

    def build():
        if a.model == "simclr":
            return SimCLR(a.backbone, in_chans=a.chans, temperature=0.2)
        if a.model == "paper_cnn":
            return build_small_model("paper_cnn", 10)
        return BackboneClassifier(build_backbone(a.backbone, in_chans=a.chans), 10, mode="full")

    runs = {}
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    for layout, memory_format in layouts.items():
        torch.manual_seed(0)
        m = build()
        m.to(memory_format=memory_format)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        runs[layout] = (m.train(), opt, [])

    def step(m, opt):
        loss = m.loss(views) if a.model == "simclr" else F.cross_entropy(m(x), y)
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
    net = a.model if a.model == "paper_cnn" else f"{a.model} {a.backbone}"
    what = f"{net} {a.chans}x{a.size}x{a.size}, batch {a.batch}, {a.threads} threads"
    for k, v in med.items():
        print(f"[train_step] {what}: {k:14s} {v:.3f} s/step")
    print(f"[train_step] channels_last speed-up: {med['contiguous'] / med['channels_last']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
