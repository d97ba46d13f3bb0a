"""GPU check of the paper's stage one: run it first thing on a GPU machine.

    python benchmarks/gpu.py                        # one CUDA GPU, about 5 minutes
    python benchmarks/gpu.py --device cpu --tiny    # dry run of every step on the CPU (tests)

Side by side in one process, it measures:

1. **Training step**, SimCLR ResNet-50 at 224 px, batch 256 (two views each): images/s of the
   fedssl client step (the Lightning ``SimCLR`` module under :func:`fedssl.runtime.trainer`)
   against a plain PyTorch loop with the same lightly parts, in fp32 (TF32 matmuls), bf16 and
   bf16 + channels-last, with the peak GPU memory of each. Both read the same pre-made, pinned
   batches, so this is the compute alone.
2. **Input pipeline** alone: JPEG decoding + SimCLR views with the configured loader workers,
   images/s against the training step's, so a starved GPU shows.
3. **Federated rounds**: three rounds of ``configs/pretrain/paper.yaml``'s model in Flower's
   simulation, two clients sharing the GPU (``gpus_per_client`` 0.5), on generated JPEG data
   sets in the real Flowers102 / Intel Image Classification layouts (about 1,000 images per
   client at their usual sizes): round time against the slowest client's training time, and
   from these the estimated wall time of the paper's 100 rounds on the real data sizes.

It writes ``docs/results/gpu.md`` (``--out``) with the device, versions and this command, after
each section as soon as it is measured: a later failure keeps the earlier sections, names the
section that failed and exits 1.
Without CUDA (and without ``--device cpu``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import sys
import tempfile
import time
from pathlib import Path

import harness  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parents[1]

# isort: off
import fedssl  # noqa: E402, F401
import torch  # noqa: E402

# isort: on

PAPER = ROOT / "configs" / "pretrain" / "paper.yaml"
PAGE = ROOT / "docs" / "results" / "gpu.md"
#: real training-split sizes (fedssl's: Flowers102 trnid + valid, Intel seg_train) and test sizes
REAL = {"flower102": (2040, 6149), "intel_scene": (14034, 3000)}
PRECISIONS = [  # label, Lightning precision, channels-last
    ("fp32", "32-true", False),
    ("bf16", "bf16-mixed", False),
    ("bf16 + channels-last", "bf16-mixed", True),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny model, images and steps (dry run)")
    p.add_argument("--steps", type=int, help="timed training steps per variant (default 12)")
    p.add_argument("--out", default=str(PAGE), help="results page (default: %(default)s)")
    p.add_argument("--work-dir", help="where generated data and runs go (default: a temp dir)")
    return p.parse_args(argv)


def settings(args) -> dict:
    """What each section runs: the paper's sizes, or tiny ones for a CPU dry run."""
    if args.tiny:
        return {
            "backbone": "test_resnet", "image_size": 32, "batch": 8, "proj_hidden": 32,
            "steps": args.steps or 2, "warmup": 1, "images": 40, "flower_px": (64, 48),
            "intel_px": (40, 40), "workers": 1, "cpus_per_client": 1, "gpus_per_client": 0.0,
            "threads": 1,
        }  # fmt: skip
    return {
        "backbone": "resnet50", "image_size": 224, "batch": 256, "proj_hidden": 2048,
        "steps": args.steps or 12, "warmup": 3, "images": 1000, "flower_px": (500, 640),
        "intel_px": (150, 150), "workers": 6, "cpus_per_client": 8, "gpus_per_client": 0.5,
        "threads": 8,
    }  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_and_reset(device: torch.device) -> float | None:
    """Peak allocated GiB since the last reset (None on the CPU)."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------------- 1. training step
class Batches(torch.utils.data.Dataset):
    """Pre-made batches of two views (pinned on GPU machines), served whole (no collation)."""

    def __init__(self, n: int, batch: int, size: int, pin: bool, distinct: int = 3):
        g = torch.Generator().manual_seed(0)
        self.items = []
        for _ in range(distinct):
            views = [torch.randn(batch, 3, size, size, generator=g) for _ in range(2)]
            if pin:
                views = [v.pin_memory() for v in views]
            self.items.append((views, torch.zeros(batch, dtype=torch.long)))
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.items[i % len(self.items)]


def fedssl_step(s: dict, rt, data: Batches) -> float:
    """Images/s of fedssl's client step: SimCLR module, runtime trainer and layout."""
    import pytorch_lightning as pl

    from fedssl import runtime
    from fedssl.methods.ssl.simclr import SimCLR

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == s["warmup"]:
                sync(rt.device)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == s["warmup"] + s["steps"] - 1:
                sync(rt.device)
                self.t1 = time.perf_counter()

    torch.manual_seed(0)
    module = SimCLR(s["backbone"], in_chans=3, proj_hidden=s["proj_hidden"], lr=0.06)
    timer = Timer()
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    with runtime.layout(module, rt):
        runtime.trainer(rt, callbacks=[timer], max_steps=s["warmup"] + s["steps"]).fit(
            module, loader
        )
    return s["steps"] * s["batch"] / (timer.t1 - timer.t0)


def plain_step(s: dict, rt, data: Batches) -> float:
    """Images/s of a hand-written loop with the same lightly parts, precision and layout."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    from fedssl.models.backbones import build_backbone

    torch.manual_seed(0)
    dev = rt.device
    backbone = build_backbone(s["backbone"], in_chans=3)
    head = SimCLRProjectionHead(backbone.num_features, s["proj_hidden"], 128)
    net = torch.nn.Sequential(backbone, head).to(dev)
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)
    crit = NTXentLoss(temperature=0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    amp = rt.autocast_dtype
    net.train()
    t0 = 0.0
    for i in range(s["warmup"] + s["steps"]):
        if i == s["warmup"]:
            sync(dev)
            t0 = time.perf_counter()
        (x0, x1), _ = data[i]
        x = torch.cat([x0.to(dev, non_blocking=True), x1.to(dev, non_blocking=True)])
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            z0, z1 = net(x).chunk(2)
            loss = crit(z0, z1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(dev)
    return s["steps"] * s["batch"] / (time.perf_counter() - t0)


def training_steps(s: dict, device: torch.device) -> list[dict]:
    from fedssl import runtime
    from fedssl.config import RuntimeConfig

    data = Batches(s["warmup"] + s["steps"], s["batch"], s["image_size"], device.type == "cuda")
    rows = []
    for label, precision, cl in PRECISIONS:
        rc = RuntimeConfig(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            precision=precision,
            channels_last=cl,
            matmul_precision="high" if device.type == "cuda" else "auto",
        )
        rt = runtime.resolve(rc)
        row = {"variant": label}
        for name, fn in (("fedssl", fedssl_step), ("plain", plain_step)):
            free(device)
            row[f"{name}_images_per_s"] = fn(s, rt, data)
            row[f"{name}_peak_gib"] = peak_and_reset(device)
            print(f"[gpu] step {label:22s} {name:6s} {row[f'{name}_images_per_s']:8.1f} img/s")
        row["ratio"] = row["fedssl_images_per_s"] / row["plain_images_per_s"]
        rows.append(row)
    fp32 = rows[0]["fedssl_images_per_s"]
    for r in rows:
        r["speedup_vs_fp32"] = r["fedssl_images_per_s"] / fp32
    return rows


# ------------------------------------------------------------------------ generated data sets
def _jpeg(path: Path, size: tuple[int, int], rng) -> None:
    """A smooth random picture (upsampled colour blocks plus grain), JPEG quality 90: file
    sizes and decode cost near real photographs, unlike pure noise."""
    import numpy as np
    from PIL import Image

    w, h = size
    small = rng.integers(0, 256, size=(max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(h, w, 3))
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_flowers(root: Path, n_train: int, n_test: int, size) -> Path:
    """Flowers102's layout: ``jpg/image_XXXXX.jpg``, ``imagelabels.mat``, ``setid.mat``, with
    about ten training images per class (the real set has twenty), at most 102 classes."""
    import numpy as np
    from scipy.io import savemat

    classes = min(102, max(2, n_train // 10))
    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    n = n_train + n_test
    for i in range(1, n + 1):
        _jpeg(folder / "jpg" / f"image_{i:05d}.jpg", size, rng)
    labels = (np.arange(n) % classes + 1).reshape(1, -1)
    savemat(folder / "imagelabels.mat", {"labels": labels})
    half = n_train // 2
    savemat(
        folder / "setid.mat",
        {
            "trnid": np.arange(1, half + 1).reshape(1, -1),
            "valid": np.arange(half + 1, n_train + 1).reshape(1, -1),
            "tstid": np.arange(n_train + 1, n + 1).reshape(1, -1),
        },
    )
    return root


def make_intel(root: Path, n_train: int, n_test: int, size) -> Path:
    """Intel Image Classification's layout: ``seg_train/seg_train/<class>/*.jpg`` and
    ``seg_test/seg_test/<class>/*.jpg``."""
    import numpy as np

    from fedssl.data.datasets import INTEL_CLASSES

    rng = np.random.default_rng(2)
    for split, n in (("seg_train", n_train), ("seg_test", n_test)):
        for k, cls in enumerate(INTEL_CLASSES):
            d = root / split / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n // len(INTEL_CLASSES) + (k < n % len(INTEL_CLASSES))):
                _jpeg(d / f"{i}.jpg", size, rng)
    return root


def paper_config(s: dict, work: Path, device: torch.device, roots: dict, rounds: int):
    from fedssl.config import load_config

    ov = [
        f"data.roots.flower102={roots['flower102']}",
        f"data.roots.intel_scene={roots['intel_scene']}",
        f"out_dir={work / 'runs'}",
        "name=gpu-bench",
        "tracking.wandb=disabled",
        f"federation.rounds={rounds}",
        f"federation.eval_every={rounds}",
        f"federation.cpus_per_client={s['cpus_per_client']}",
        f"federation.gpus_per_client={s['gpus_per_client']}",
        f"train.threads={s['threads']}",
        f"runtime.workers={s['workers']}",
        f"ssl.knn_queries={200 if s['images'] >= 1000 else 20}",
    ]
    if device.type == "cpu":
        ov += ["runtime.accelerator=cpu"]
    if s["backbone"] != "resnet50":
        ov += [
            f"model.backbone={s['backbone']}",
            f"model.image_size={s['image_size']}",
            f"model.proj_hidden={s['proj_hidden']}",
            f"train.batch_size={s['batch']}",
            f"train.eval_batch_size={s['batch']}",
        ]
    return load_config(PAPER, ov)


# ------------------------------------------------------------------------ 2. input pipeline
def input_pipeline(cfg, device: torch.device) -> list[dict]:
    """Images/s of each client's SimCLR views from its JPEG files with the configured workers
    (three epochs; the first batch, which pays for the workers' start, is left out), made both
    ways: lightly's PIL views in the workers (``ssl.views: lightly``), and batched views
    (``ssl.views: batched``: the workers decode and resize, the views are made on ``device``
    after the batch lands)."""
    from fedssl import runtime
    from fedssl.methods.views import batch_views, views_dataset, views_loader

    rt = runtime.resolve(cfg)
    out = []
    for views in ("lightly", "batched"):
        cfg = copy.deepcopy(cfg)
        cfg.ssl.views = views
        maker = batch_views(cfg)
        for pid, name in enumerate(cfg.data.clients):
            ds = views_dataset(cfg, pid)
            loader = views_loader(ds, cfg.train.batch_size, seed=pid, rt=rt)
            n, t0 = 0, None
            for _epoch in range(3):
                for first, second in loader:
                    if maker is not None:  # images and client ids: the views on the device
                        first = maker(first.to(device, non_blocking=True), second.to(device))
                        sync(device)
                    if t0 is None:
                        t0 = time.perf_counter()
                        continue
                    n += len(first[0])
            secs = time.perf_counter() - t0
            out.append({"client": name, "views": views, "images": len(ds),
                        "workers": rt.workers,
                        "images_per_s": n / secs if secs > 0 else 0.0})  # fmt: skip
            print(f"[gpu] pipeline {name}, {views} views: {out[-1]['images_per_s']:.0f} img/s "
                  f"({rt.workers} workers)")  # fmt: skip
            del loader
    return out


# ------------------------------------------------------------------------ 3. federated rounds
def federated_rounds(cfg) -> dict:
    from fedssl.federation.simulation import simulate
    from fedssl.runs import RunDir, claim_run_dir

    claim_run_dir(cfg.run_dir(), overwrite=True)  # a rerun in the same --work-dir
    t0 = time.perf_counter()
    simulate(cfg)
    wall = time.perf_counter() - t0
    rows = [r for r in RunDir(cfg.run_dir()).metrics() if r["round"] > 0]
    per_round = []
    for r in rows:
        train = [r.get(f"train_s_c{c}") or 0.0 for c in range(len(cfg.data.clients))]
        ips = [r.get(f"images_per_s_c{c}") or 0.0 for c in range(len(cfg.data.clients))]
        per_round.append({"round": r["round"], "round_s": r["round_s"], "train_s": train,
                          "images_per_s": ips, "ratio": r["round_s"] / max(train),
                          "knn_acc_mean": r.get("knn_acc_mean")})  # fmt: skip
        print(f"[gpu] round {r['round']}: {r['round_s']:.1f}s, slowest client trains "
              f"{max(train):.1f}s (x{per_round[-1]['ratio']:.2f})")  # fmt: skip
    return {"wall_s": wall, "rounds": per_round}


def estimate_paper_run(fed: dict, cfg, measured_train: int, measured_test: int) -> dict:
    """Wall time of paper.yaml's rounds on the real data sizes, extrapolated from a warm
    training round (round 2) and the evaluated last round of the measurement: training time
    scales with each client's unlabeled images at its measured rate, evaluation with the kNN
    bank + queries, the rest of a round is taken as it was."""
    rounds = fed["rounds"]
    warm = rounds[1] if len(rounds) > 2 else rounds[-1]
    last = rounds[-1]
    frac = 1 - cfg.data.labeled_fraction
    real_unl = [int(REAL[c][0] * frac) for c in cfg.data.clients]
    # each client's training time scales with its unlabeled images at its measured rate
    train = max(u / ips for u, ips in zip(real_unl, warm["images_per_s"], strict=True) if ips)
    overhead = warm["round_s"] - max(warm["train_s"])
    eval_s = max(0.0, last["round_s"] - warm["round_s"])
    q = cfg.ssl.knn_queries
    real_eval = max(REAL[c][0] * (1 - frac) + min(REAL[c][1], q or REAL[c][1]) for c in REAL)
    measured_eval = measured_train * (1 - frac) + min(measured_test, q or measured_test)
    scale = real_eval / measured_eval
    n, k = 100, 100 // 5  # paper.yaml: 100 rounds, evaluated every 5th
    total = n * (train + overhead) + k * eval_s * scale
    return {"train_round_s": train, "overhead_round_s": overhead, "eval_round_s": eval_s * scale,
            "real_unlabeled": real_unl, "minutes_100_rounds": total / 60}  # fmt: skip


# ------------------------------------------------------------------------------- the page
def versions() -> dict:
    import flwr
    import lightly
    import pytorch_lightning as pl
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "lightning": pl.__version__, "flwr": flwr.__version__,
            "timm": timm.__version__, "lightly": lightly.__version__}  # fmt: skip


def _f(x, fmt=".1f") -> str:
    return "-" if x is None else format(x, fmt)


def render(res: dict) -> str:
    s = res["settings"]
    lines = [
        "# GPU check: the paper's stage one on one GPU",
        "",
        f"Command: `{res['command']}` ({res['date']}). Device: **{res['device']}**. "
        + ", ".join(f"{k} {v}" for k, v in res["versions"].items())
        + ".",
        "",
    ]
    if res.get("dry_run"):
        lines += ["**Dry run on the CPU with a tiny model: these figures say nothing about GPUs.**",
                  ""]  # fmt: skip
    if "steps" not in res:
        return _ending(lines, res)
    lines += [
        f"## Training step: SimCLR {s['backbone']}, {s['image_size']} px, batch {s['batch']}",
        "",
        f"Images/s (each image is two views), {s['steps']} timed steps after {s['warmup']} "
        "warm-up step(s), the same pre-made batches for both"
        + (
            ""
            if res.get("dry_run")
            else "; fp32 runs its matmuls in TF32 (`runtime.matmul_precision: high`)"
        )
        + ". Targets: fedssl >= 0.95x plain; bf16 + channels-last >= 1.8x fp32.",
        "",
        "| variant | fedssl img/s | plain img/s | fedssl / plain | vs fp32 | peak GiB fedssl | "
        "peak GiB plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["steps"]:
        lines.append(
            f"| {r['variant']} | {_f(r['fedssl_images_per_s'])} | {_f(r['plain_images_per_s'])} "
            f"| {r['ratio']:.3f} | {r['speedup_vs_fp32']:.2f}x | {_f(r['fedssl_peak_gib'])} | "
            f"{_f(r['plain_peak_gib'])} |"
        )
    if "pipeline" not in res:
        return _ending(lines, res)
    best = res["steps"][-1]["fedssl_images_per_s"]
    lines += ["", "## Input pipeline (JPEG decode + SimCLR views)", "",
              "`lightly`: lightly's PIL views in the loader's workers; `batched` "
              "(`ssl.views: batched`): the workers decode and resize, the views are made on the "
              "device from the whole batch.", "",
              "| client | views | unlabeled images | workers | pipeline img/s | training img/s "
              "(bf16 + channels-last) | keeps up |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in res["pipeline"]:
        ok = "yes" if p["images_per_s"] >= best else "**no**"
        lines.append(f"| {p['client']} | {p.get('views', 'lightly')} | {p['images']} | "
                     f"{p['workers']} | {p['images_per_s']:.0f} | {best:.0f} | {ok} |")  # fmt: skip
    if "federated" not in res:
        return _ending(lines, res)
    fed = res["federated"]
    lines += ["", "## Federated rounds: two clients sharing the GPU (0.5 each)", "",
              f"`paper.yaml`'s model and runtime, generated JPEG data in the Flowers102 / Intel "
              f"layouts ({s['images']} training images per client). Target: round time <= 1.15x "
              f"the slowest client's training time. Simulation wall time "
              f"{fed['wall_s']:.0f} s (Ray start included).", "",
              "| round | round s | client train s | client img/s | round / slowest |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in fed["rounds"]:
        lines.append(
            f"| {r['round']} | {r['round_s']:.1f} | "
            + " / ".join(f"{t:.1f}" for t in r["train_s"])
            + " | "
            + " / ".join(f"{x:.0f}" for x in r["images_per_s"])
            + f" | {r['ratio']:.2f}x |"
        )
    if "estimate" not in res:
        return _ending(lines, res)
    est = res["estimate"]
    lines += ["", "## Estimated wall time of paper.yaml (100 rounds, real data sizes)", "",
              f"Unlabeled images per client {est['real_unlabeled']}: training "
              f"{est['train_round_s']:.1f} s per round (the slower client at its measured "
              f"rate), {est['overhead_round_s']:.1f} s per round beyond it, kNN evaluation "
              f"{est['eval_round_s']:.1f} s every 5th round: **{est['minutes_100_rounds']:.1f} "
              "min** (aim: under 30 min on one H200-class GPU). An extrapolation from the "
              "generated data's warm round, not a measured run.", ""]  # fmt: skip
    return _ending(lines, res)


def _ending(lines: list[str], res: dict) -> str:
    """The page so far, and which section failed or is still to come."""
    if res.get("failed"):
        f = res["failed"]
        lines += ["", f"**Section `{f['section']}` failed: {f['error']}.** The sections above "
                  "were measured before it; the ones after it were not run.", ""]  # fmt: skip
    elif "estimate" not in res:
        lines += ["", "*Measuring: the sections below this line are still to come.*", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("[gpu] no CUDA device here: nothing to measure (on a GPU machine run "
              "`python benchmarks/gpu.py`; `--device cpu --tiny` dry-runs every step)")  # fmt: skip
        return 0
    device = torch.device(args.device)
    s = settings(args)
    t_all = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fedssl-gpu-"))
    given = argv if argv is not None else sys.argv[1:]
    res = {
        "command": " ".join(["python benchmarks/gpu.py", *given]),
        "date": time.strftime("%Y-%m-%d"),
        "device": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"CPU ({platform.machine()})"
        ),
        "dry_run": device.type == "cpu",
        "versions": versions(),
        "settings": s,
    }
    torch.set_num_threads(max(1, s["threads"]))
    n_test = max(10, s["images"] // 5)
    state: dict = {}

    def pipeline():
        roots = {
            "flower102": make_flowers(work / "flowers", s["images"], n_test, s["flower_px"]),
            "intel_scene": make_intel(work / "intel", s["images"], n_test, s["intel_px"]),
        }
        print(f"[gpu] generated {2 * (s['images'] + n_test)} JPEGs under {work}", flush=True)
        state["cfg"] = paper_config(s, work, device, roots, rounds=3)
        return input_pipeline(state["cfg"], device)

    sections = [  # each written as soon as it is measured
        ("steps", lambda: training_steps(s, device)),
        ("pipeline", pipeline),
        ("federated", lambda: federated_rounds(state["cfg"])),
        ("estimate", lambda: estimate_paper_run(res["federated"], state["cfg"], s["images"],
                                                n_test)),
    ]  # fmt: skip
    out = Path(args.out)
    for name, measure in sections:
        try:
            res[name] = measure()
        except Exception as err:  # keep what was measured, say what failed
            res["failed"] = {"section": name, "error": f"{type(err).__name__}: {err}"}
            res["wall_s"] = time.perf_counter() - t_all
            harness.write_results(out, res, render)
            print(f"[gpu] section {name!r} failed ({res['failed']['error']}); {out} keeps "
                  "the sections before it", file=sys.stderr)  # fmt: skip
            return 1
        free(device)
        res["wall_s"] = time.perf_counter() - t_all
        harness.write_results(out, {**res, "load_at_end": None}, render)
        print(f"[gpu] {name}: written to {out}", flush=True)
    res.pop("load_at_end", None)
    harness.write_results(out, res, render)
    print(f"[gpu] wrote {out} in {res['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
