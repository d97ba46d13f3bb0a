"""Where SSL views are made, side by side: lightly's PIL transforms in the loader
(``ssl.views: lightly``) against batched views on the training device (``ssl.views: batched``).

    python benchmarks/views.py                  # the default job's clients, 3 passes (~2 min)
    python benchmarks/views.py --passes 1 --set data.max_per_client=400 --out /tmp/views.md

Two measurements, each in turns (one call of every variant per pass, median over passes, so a
busy spell of the machine weighs on all alike; compare the ratios):

1. **Views alone**: milliseconds per image, loading it and making both views, on a batch
   (``train.batch_size``) of the last client's images: lightly's transform image by image as a
   loader worker does, against the images alone stacked and made into views by one call of
   :class:`~fedssl.methods.ssl.batch_views.BatchViews`.
2. **A client's round**: seconds of :func:`fedssl.federation.pretraining.local_train` (module,
   data, one local epoch of training: what a client does each round) per client and way.

It writes ``docs/results/views.md`` (``--out``) and its JSON, with the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import harness  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "pretrain" / "default.yaml"
PAGE = ROOT / "docs" / "results" / "views.md"
WAYS = ("lightly", "batched")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--passes", type=int, default=3, help="turns of every variant (median)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", default=str(PAGE), help="results page (default: %(default)s)")
    a = p.parse_args(argv)
    if a.passes < 1:
        p.error(f"--passes must be 1 or more (got {a.passes})")
    return a


def configs(overrides: list[str]) -> dict:
    from fedssl.config import load_config

    return {w: load_config(DEFAULT, [*overrides, f"ssl.views={w}"]) for w in WAYS}


def views_alone(cfgs: dict, passes: int) -> dict[str, float]:
    """Milliseconds per image (loading it and making both views) of each way, on one batch of
    the last client's images: lightly's dataset item by item, as a loader worker does, against
    the batched dataset's items (the image alone) stacked and made into views in one call."""
    import torch

    from fedssl.methods.views import batch_views, views_dataset

    pid = len(cfgs["lightly"].data.clients) - 1
    plain, images = views_dataset(cfgs["lightly"], pid), views_dataset(cfgs["batched"], pid)
    n = min(cfgs["lightly"].train.batch_size, len(plain))
    maker = batch_views(cfgs["batched"])

    def batched():
        items = [images[i] for i in range(n)]
        return maker(torch.stack([x for x, _ in items]), torch.tensor([g for _, g in items]))

    secs = harness.interleaved(
        {"lightly": lambda: [plain[i] for i in range(n)], "batched": batched}, max(5, 5 * passes)
    )
    return {w: 1000 * s / n for w, s in secs.items()}


def client_rounds(cfgs: dict, passes: int) -> list[dict]:
    """Median seconds of one client's local round, each way, per client."""
    from fedssl.federation import pretraining

    start = pretraining.initial_state(cfgs["lightly"])
    rows = []
    for pid, name in enumerate(cfgs["lightly"].data.clients):
        fns = {
            w: (lambda c=c, p=pid: pretraining.local_train(c, p, start, 1)) for w, c in cfgs.items()
        }
        secs = harness.interleaved(fns, passes)
        rows.append({"client": name, **{f"{w}_s": secs[w] for w in WAYS}})
        print(f"[views] {name}: " + ", ".join(f"{w} {secs[w]:.2f} s" for w in WAYS), flush=True)
    return rows


def render(res: dict) -> str:
    v = res["views_ms_per_image"]
    lines = [
        "# Where SSL views are made: lightly's PIL transforms against batched views",
        "",
        f"Command: `{res['command']}` ({res['date']}). Machine: {res['machine']}. Load "
        f"(1/5/15 min) at start {res['load_at_start']}, at end {res.get('load_at_end')}. "
        f"{res['wall_s']:.0f} s in all.",
        "",
        "`lightly`: each view made from a PIL image by lightly's transform, in the loader "
        "(`ssl.views: lightly`, the default); `batched`: the loader delivers the "
        "images and the views of the whole batch are made by tensor operations on the training "
        "device (`ssl.views: batched`, fedssl.methods.ssl.batch_views). Timed in turns, median "
        f"over {res['passes']} pass(es); compare the ratios.",
        "",
        "## Views alone (both views of each image)",
        "",
        "| way | ms per image | vs lightly |",
        "|---|---|---|",
    ]
    for w in WAYS:
        lines.append(f"| {w} | {v[w]:.3f} | {v[w] / v['lightly']:.2f}x |")
    lines += [
        "",
        "## A client's round (`local_train`: module, data, one local epoch)",
        "",
        "| client | lightly s | batched s | batched / lightly |",
        "|---|---|---|---|",
    ]
    for r in res["rounds"]:
        lines.append(
            f"| {r['client']} | {r['lightly_s']:.2f} | {r['batched_s']:.2f} | "
            f"{r['batched_s'] / r['lightly_s']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    res = harness.stamp("views.py", argv)
    t0 = time.perf_counter()
    cfgs = configs(args.set)
    torch.set_num_threads(max(1, cfgs["lightly"].train.threads))
    res["passes"] = args.passes
    res["views_ms_per_image"] = views_alone(cfgs, args.passes)
    print(
        "[views] views alone: "
        + ", ".join(f"{w} {res['views_ms_per_image'][w]:.3f} ms/image" for w in WAYS),
        flush=True,
    )
    res["rounds"] = client_rounds(cfgs, args.passes)
    res["wall_s"] = time.perf_counter() - t0
    out = harness.write_results(args.out, res, render)
    print(f"[views] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
