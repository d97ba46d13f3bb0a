"""Benchmark fedssl.aggregation.merge on ResNet-50 state dicts against a plain copy and Flower.

    python benchmarks/aggregation.py                 # 2 and 10 clients, every method
    python benchmarks/aggregation.py --clients 2 --repeats 5
    THP_MEM_ALLOC_ENABLE=0 python benchmarks/aggregation.py \
        --out docs/results/aggregation-default-allocator.md

For each client count it builds that many ResNet-50 state dicts (timm, random weights, float32),
then times, in the same process and run (min of ``--repeats``):

* ``copy``: every tensor of every client copied into preallocated tensors (reads and writes the
  same bytes: the machine's memory bandwidth), and ``clone()`` (the same plus fresh allocations,
  which is what any merge that returns new tensors pays);
* ``merge(method)`` for each fedssl method;
* Flower's FedAvg code on the same inputs: ``aggregate_arrayrecords`` (Message API, inputs as
  RecordDicts of ArrayRecords) and ``flwr.server.strategy.aggregate.aggregate`` (NumPy lists);
* fedssl from the same RecordDicts (``from_record`` + ``merge``), the like-for-like comparison
  with ``aggregate_arrayrecords``.

"GB/s read" is input bytes (clients x model size) / time. The table is printed and written to
``docs/results/aggregation.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import harness  # benchmarks/harness.py

# isort: off
import fedssl  # noqa: F401  (before torch: sets THP_MEM_ALLOC_ENABLE, see fedssl/__init__)
import torch

# isort: on

from fedssl.aggregation import METHODS, merge

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "aggregation.md"


def make_clients(n: int) -> list[dict[str, torch.Tensor]]:
    import timm

    model = timm.create_model("resnet50", pretrained=False, num_classes=0)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        out.append(
            {
                k: (
                    v + 0.01 * torch.randn(v.shape, generator=g)
                    if v.is_floating_point()
                    else v.clone()
                )
                for k, v in base.items()
            }
        )
    return out


def thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    return next((w.strip("[]") for w in text.split() if w.startswith("[")), text.strip())


def run(n: int, repeats: int) -> list[tuple[str, float, float]]:
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.server.strategy.aggregate import aggregate
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from fedssl.federation.strategy import merge_contents

    sds = make_clients(n)
    nbytes = sum(t.numel() * t.element_size() for sd in sds for t in sd.values())
    weights = [1000.0 * (i + 1) for i in range(n)]
    rows = []

    def add(name, seconds):
        rows.append((name, seconds * 1e3, nbytes / seconds / 1e9))
        print(
            f"  n={n:2d} {name:38s} {seconds * 1e3:9.1f} ms "
            f"{nbytes / seconds / 1e9:7.2f} GB/s read",
            flush=True,
        )

    dst = [{k: torch.empty_like(v) for k, v in sd.items()} for sd in sds]
    add(
        "copy into preallocated tensors",
        harness.best_time(
            lambda: [d[k].copy_(v) for sd, d in zip(sds, dst, strict=True) for k, v in sd.items()],
            repeats,
        ),
    )
    add(
        "copy (clone: allocates, as merge does)",
        harness.best_time(lambda: [{k: v.clone() for k, v in sd.items()} for sd in sds], repeats),
    )
    for method in METHODS:
        w = weights if method == "avg" else None
        add(
            f"fedssl merge {method}",
            harness.best_time(
                lambda m=method, w=w: merge(sds, m, weights=w),
                repeats if method not in ("median", "trimmed_mean") else 1,
            ),
        )
    records = [
        RecordDict({"arrays": ArrayRecord(sd), "metrics": MetricRecord({"num-examples": w})})
        for sd, w in zip(sds, weights, strict=True)
    ]
    add(
        "fedssl from RecordDicts (avg)",
        harness.best_time(lambda: merge_contents(records, "avg"), repeats),
    )
    add(
        "flwr aggregate_arrayrecords",
        harness.best_time(lambda: aggregate_arrayrecords(records, "num-examples"), repeats),
    )
    nd = [([v.numpy() for v in sd.values()], int(w)) for sd, w in zip(sds, weights, strict=True)]
    add("flwr server.strategy.aggregate", harness.best_time(lambda: aggregate(nd), repeats))
    # correctness: fedssl avg equals Flower's FedAvg
    ours = merge(sds, "avg", weights=weights)
    theirs = aggregate(nd)
    err = max(
        float((ours[k].double() - torch.from_numpy(t).double()).abs().max())
        for k, t in zip(sds[0], theirs, strict=True)
        if ours[k].is_floating_point()
    )
    print(f"  n={n}: max |fedssl avg - flwr aggregate| = {err:.2e}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, nargs="+", default=[2, 10])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    cmd = "python benchmarks/aggregation.py " + " ".join(argv or sys.argv[1:])
    if thp != "1":
        cmd = f"THP_MEM_ALLOC_ENABLE={thp} {cmd}"
    lines = [
        "# Aggregation benchmark: ResNet-50 state dicts",
        "",
        f"Command: `{cmd.strip()}` (torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}).",
        "Times are the best of the repeats (median and trimmed_mean: one run). GB/s read = input "
        "bytes (clients x 102 MB) / time. 'vs copy' = time of the preallocated copy of the same "
        "bytes / time (1.00 = copy bandwidth).",
        "",
        f"Allocator: THP_MEM_ALLOC_ENABLE={thp} (fedssl sets 1 unless told otherwise; "
        f"transparent huge pages here: {thp_mode()}).",
        "",
        "Reading: a merge returns new tensors, so besides reading its inputs it pays what `clone` "
        "pays on top of a copy: the first touch of freshly allocated memory. With torch's default "
        "allocator and THP in `madvise` mode that first touch costs 4 KiB page faults and "
        "dominates a 2-client merge; with THP_MEM_ALLOC_ENABLE=1 (fedssl's default) tensors of "
        ">= 2 MB get huge pages and the cost mostly goes away. `avg` is a running weighted mean "
        "with `lerp` (one fused pass for 2 clients). "
        + (
            "Compare [the same benchmark with torch's default allocator]"
            "(aggregation-default-allocator.md)."
            if thp == "1"
            else "Compare [the same benchmark with fedssl's default](aggregation.md)."
        ),
        "",
    ]
    for n in args.clients:
        print(f"[bench] {n} clients", flush=True)
        rows = run(n, args.repeats)
        copy_ms = rows[0][1]
        flwr_ms = {name: ms for name, ms, _ in rows if name.startswith("flwr")}
        avg_ms = next(ms for name, ms, _ in rows if name == "fedssl merge avg")
        lines += [
            f"## {n} clients",
            "",
            "| operation | ms | GB/s read | vs copy |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {ms:.1f} | {gbs:.2f} | {copy_ms / ms:.2f} |" for name, ms, gbs in rows
        ]
        lines += [
            "",
            f"`avg` reaches {copy_ms / avg_ms:.0%} of the copy bandwidth (target >= 50%); "
            + "; ".join(f"{flwr_ms[k] / avg_ms:.1f}x faster than `{k}`" for k in flwr_ms)
            + ".",
            "",
        ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"[bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
