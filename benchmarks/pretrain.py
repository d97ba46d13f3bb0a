"""Stage-one benchmarks (issue "Stage one"): throughput, Flower overhead, federated vs
centralized SimCLR, peak memory. Each section prints its figures and updates
``docs/results/pretrain.md`` (results are kept in ``docs/results/pretrain.json`` so sections can
be re-run one at a time).

    python benchmarks/pretrain.py throughput        # fedssl local epoch vs a plain PyTorch loop
    python benchmarks/pretrain.py overhead          # Flower time per round beyond training
    python benchmarks/pretrain.py fed-vs-central    # kNN: federated vs centralized, IID + non-IID
    python benchmarks/pretrain.py memory            # peak RSS of `python launch/pretrain.py`
    python benchmarks/pretrain.py all

Options: ``--set key=value ...`` (config overrides for every section), ``--rounds N``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parents[1]

# isort: off
import fedssl  # noqa: E402, F401
import torch  # noqa: E402

# isort: on

from fedssl.config import ExperimentConfig, load_config  # noqa: E402

DEFAULT = ROOT / "configs" / "pretrain" / "default.yaml"
RESULTS = ROOT / "docs" / "results" / "pretrain.json"
PAGE = ROOT / "docs" / "results" / "pretrain.md"


def config(overrides: list[str]) -> ExperimentConfig:
    return load_config(DEFAULT, ["tracking.wandb=disabled", *overrides])


# ----------------------------------------------------------------------------- throughput
def plain_epoch(cfg: ExperimentConfig, seed: int) -> tuple[float, int]:
    """One epoch of client 0's unlabeled images with a hand-written PyTorch loop and the same
    lightly components (views, projection head, NT-Xent), backbone, batch size, threads and
    weight layout (channels-last when the runtime trains in it)."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    from fedssl.methods.ssl_recipe import method_settings, model_in_chans
    from fedssl.methods.views import views_dataset, views_loader
    from fedssl.models.backbones import build_backbone

    torch.manual_seed(seed)
    m = cfg.model
    backbone = build_backbone(m.backbone, in_chans=model_in_chans(cfg), small_input=m.small_input)
    widths = method_settings(cfg, warn=False)  # the config's head widths, else SimCLR's recipe
    head = SimCLRProjectionHead(backbone.num_features, widths["proj_hidden"], widths["proj_out"])
    criterion = NTXentLoss(temperature=cfg.ssl.temperature)
    from fedssl import runtime

    if runtime.resolve(cfg).channels_last:
        backbone.to(memory_format=torch.channels_last)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(
        params, lr=cfg.train.lr, momentum=0.9, weight_decay=cfg.train.weight_decay
    )
    ds = views_dataset(cfg, 0)
    loader = views_loader(ds, cfg.train.batch_size, seed, runtime.resolve(cfg))
    backbone.train(), head.train()
    t0, steps = time.perf_counter(), 0
    for (x0, x1), _ in loader:
        z = head(backbone(torch.cat([x0, x1])))
        z0, z1 = z.chunk(2)
        loss = criterion(z0, z1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return time.perf_counter() - t0, steps * cfg.train.batch_size


def fedssl_epoch(cfg: ExperimentConfig, seed: int) -> tuple[float, int]:
    """fedssl's client step (Lightning SimCLR module, its DataLoader) for one local epoch."""
    from fedssl.federation import pretraining

    torch.manual_seed(seed)
    state = pretraining.initial_state(cfg)
    _, metrics = pretraining.local_train(cfg, 0, state, 1)
    return metrics["train_s"], int(metrics["steps"]) * cfg.train.batch_size


def throughput(overrides: list[str], repeats: int) -> dict:
    from fedssl import runtime

    cfg = config(overrides)
    torch.set_num_threads(cfg.train.threads)
    best = {"fedssl": 0.0, "plain": 0.0}
    for r in range(repeats):
        for name, fn in (("fedssl", fedssl_epoch), ("plain", plain_epoch)):
            s, n = fn(cfg, seed=r)
            best[name] = max(best[name], n / s)
            print(f"[throughput] repeat {r} {name:6s} {n} images in {s:.1f}s = {n / s:.1f}/s")
    ratio = best["fedssl"] / best["plain"]
    print(f"[throughput] fedssl / plain = {ratio:.3f}")
    return {
        "backbone": cfg.model.backbone,
        "image_size": cfg.model.image_size,
        "batch_size": cfg.train.batch_size,
        "threads": cfg.train.threads,
        "repeats": repeats,
        "channels_last": runtime.resolve(cfg).channels_last,
        "fedssl_images_per_s": best["fedssl"],
        "plain_images_per_s": best["plain"],
        "ratio": ratio,
    }


# ----------------------------------------------------------------------------- simulations
def simulate_rows(cfg: ExperimentConfig) -> list[dict]:
    from fedssl.federation.simulation import simulate
    from fedssl.runs import RunDir

    simulate(cfg)
    return RunDir(cfg.run_dir()).metrics()


def overhead(overrides: list[str], rounds: int) -> dict:
    """Per round: train phase (configure_train -> replies merged) minus the slowest client's
    training time = what Flower, Ray, messaging and model (de)serialisation add."""
    out = {}
    cases = {
        "default (resnet18, 28 px)": [],
        "ResNet-50-sized weights": [
            "model.backbone=resnet50",
            "model.proj_hidden=2048",
            "train.local_steps=2",
            "train.batch_size=32",
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in cases.items():
            cfg = config(
                [*overrides, *extra, f"out_dir={tmp}", f"federation.rounds={rounds}",
                 f"name=overhead-{len(out)}", "federation.eval_every=1000"]
            )  # fmt: skip
            rows = simulate_rows(cfg)
            per_round = []
            for r in rows:
                slowest = max(v for k, v in r.items() if k.startswith("train_s_c") and v)
                per_round.append(
                    {
                        "round": r["round"],
                        "train_phase_s": r["train_phase_s"],
                        "slowest_client_s": slowest,
                        "overhead_s": r["train_phase_s"] - slowest,
                        "bytes_up": r["bytes_up"],
                    }
                )
            steady = per_round[1:] or per_round  # round 1 includes actor and data start-up
            mean = {
                k: sum(p[k] for p in steady) / len(steady)
                for k in ("train_phase_s", "slowest_client_s", "overhead_s")
            }
            out[label] = {
                "rounds": per_round,
                "steady": mean,
                "fraction": mean["overhead_s"] / mean["train_phase_s"],
                "megabytes_per_client": per_round[0]["bytes_up"] / 2 / 1e6,
            }
            print(
                f"[overhead] {label}: train phase {mean['train_phase_s']:.2f}s, slowest client "
                f"{mean['slowest_client_s']:.2f}s, overhead {mean['overhead_s']:.2f}s "
                f"({out[label]['fraction']:.1%})"
            )
    return out


FVC_CASES = {
    "iid": (
        "IID: Fashion-MNIST split over 2 clients",
        ["data.clients=[fashion_mnist,fashion_mnist]"],
    ),
    "noniid": ("non-IID: client 0 Fashion-MNIST, client 1 MNIST", []),
}


def fed_vs_central(overrides: list[str], rounds: int, which: list[str]) -> dict:
    from fedssl.methods.pretrain import pretrain_centralized

    out = {}
    cases = {}
    for key in which:
        label, extra = FVC_CASES[key]
        fed_only = [o for o in overrides if o.startswith("federation.server")]
        if rounds != config(overrides).federation.rounds:
            fed_only.append(f"{rounds} rounds")
        cases[label + (f" — {' '.join(fed_only)}" if fed_only else "")] = extra
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, extra) in enumerate(cases.items()):
            cfg = config(
                [*overrides, *extra, f"out_dir={tmp}", f"federation.rounds={rounds}",
                 f"name=fvc-{i}", f"federation.eval_every={rounds}"]
            )  # fmt: skip
            t = time.perf_counter()
            rows = simulate_rows(cfg)
            fed_s = time.perf_counter() - t
            last = rows[-1]
            init = {k: v for k, v in rows[0].items() if k.startswith("knn_init_c")}
            pixels = {k: v for k, v in rows[0].items() if k.startswith("knn_pixels_c")}
            fed = {k: v for k, v in last.items() if k.startswith("knn_acc_")}
            t = time.perf_counter()
            cfg.train.threads = os.cpu_count() or 1  # one model: it may use every core
            cen = pretrain_centralized(cfg, rounds)
            cen_s = time.perf_counter() - t
            out[label] = {
                "overrides": overrides,
                "rounds": rounds,
                "clients": cfg.data.clients,
                "init": init,
                "pixels": pixels,
                "federated": fed,
                "centralized": {k: v for k, v in cen.items() if k.startswith("knn_acc_")},
                "ratio": fed["knn_acc_mean"] / cen["knn_acc_mean"],
                "federated_s": fed_s,
                "centralized_s": cen_s,
            }
            print(
                f"[fed-vs-central] {label}: federated {fed['knn_acc_mean']:.4f} vs centralized "
                f"{cen['knn_acc_mean']:.4f} = {out[label]['ratio']:.3f}x"
            )
    return out


# ----------------------------------------------------------------------------- memory
def _tree_rss(pid: int) -> int:
    """Resident memory (bytes) of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def memory(overrides: list[str], rounds: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "launch" / "pretrain.py"), "--wandb", "disabled",
               "--out-dir", tmp, "--name", "memory"]  # fmt: skip
        if rounds:
            cmd += ["--rounds", str(rounds)]
        if overrides:
            cmd += ["--set", *overrides]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = {"rss": 0}

        def sample():
            while proc.poll() is None:
                peak["rss"] = max(peak["rss"], _tree_rss(proc.pid))
                time.sleep(0.5)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        log = proc.communicate()[0]
        th.join()
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"launch/pretrain.py failed:\n{log[-3000:]}")
    summary = [line for line in log.splitlines() if "random init" in line or "mean:" in line]
    print(f"[memory] peak RSS of the process tree {peak['rss'] / 2**30:.2f} GiB, wall {wall:.0f}s")
    return {
        "launched": " ".join(["python launch/pretrain.py", *cmd[2:]]).replace(tmp, "<tmp>"),
        "peak_rss_gib": peak["rss"] / 2**30,
        "wall_s": wall,
        "summary": summary,
    }


# ----------------------------------------------------------------------------- page
def render(results: dict) -> str:
    env = results.get("_env", {})
    lines = [
        "# Stage one: federated SimCLR pretraining — measured",
        "",
        "Paper 003 (stage one) trains a shared backbone with SimCLR on each client's unlabeled",
        "data and merges it by FedAvg. The paper reports no stage-one numbers of its own (its",
        "results are the stage-two accuracies, see multitask.md), so this page measures",
        "stage one's speed against plain PyTorch, Flower's overhead, and federated against",
        "centralized SimCLR on the same data and budget.",
        "",
        f"Machine: {env.get('machine', '?')}; torch {env.get('torch', '?')}. Every section is "
        "produced by `python benchmarks/pretrain.py <section>` (the command is given per "
        "section, with the date it ran).",
        "",
    ]
    if "default_run" in results:
        d = results["default_run"]
        lines += [
            "## The embedded default (`python launch/pretrain.py`)",
            "",
            f"Command: `{d['command']}` ({d['date']}), which runs "
            f"`{d.get('launched', 'python launch/pretrain.py')}`: wall time {d['wall_s']:.0f} s "
            f"(target < 15 min), peak memory {d['peak_rss_gib']:.2f} GiB — the sum of the "
            "resident sizes of the launcher, Ray's processes and the two client workers, sampled "
            "every 0.5 s (pages shared between processes, e.g. torch's libraries, count once per "
            "process, so this overstates the physical memory used).",
            "",
            "```",
            *d["summary"],
            "```",
            "",
        ]
    if "throughput" in results:
        r = results["throughput"]
        lines += [
            "## Throughput of one client's local epoch",
            "",
            f"Command: `{r['command']}` ({r['date']}). {r['backbone']} at {r['image_size']} px, "
            f"batch {r['batch_size']}, {r['threads']} thread(s), client 0's unlabeled images, "
            f"best of {r['repeats']} alternating repeats"
            + (
                ", both loops with channels-last weights (fedssl.runtime's default)"
                if r.get("channels_last")
                else ""
            )
            + f". {r.get('note', '')}",
            "",
            "| loop | images/s |",
            "|---|---|",
            f"| fedssl client (Lightning SimCLR module, fedssl.runtime) | "
            f"{r['fedssl_images_per_s']:.1f} |",
            f"| plain PyTorch loop, same lightly components | {r['plain_images_per_s']:.1f} |",
            f"| **ratio** (target >= 0.95) | **{r['ratio']:.3f}** |",
            "",
        ]
    if "overhead" in results:
        r = results["overhead"]
        lines += [
            "## Flower overhead per round",
            "",
            f"Command: `{r['command']}` ({r['date']}). Overhead = the round's train phase "
            "(messages out, clients train, replies back and merged) minus the slowest client's "
            "training time; mean over rounds 2+ (round 1 also starts Ray actors and loads data). "
            + r.get("note", ""),
            "",
            "| case | MB per client per direction | train phase s | slowest client s | "
            "overhead s | share of the round |",
            "|---|---|---|---|---|---|",
        ]
        for label, v in r["cases"].items():
            s = v["steady"]
            lines.append(
                f"| {label} | {v['megabytes_per_client']:.1f} | {s['train_phase_s']:.2f} | "
                f"{s['slowest_client_s']:.2f} | {s['overhead_s']:.2f} | {v['fraction']:.1%} |"
            )
        lines += [
            "",
            "The ResNet-50 case trains only two mini-batches per round (to isolate the cost of "
            "moving ~100 MB per client each way through Flower's simulation engine), so its share "
            "is the share of a deliberately tiny round; with a real local epoch (minutes for "
            "ResNet-50) the same seconds are a few percent.",
            "",
        ]
    if "fed_vs_central" in results:
        r = results["fed_vs_central"]
        lines += [
            "## Federated vs centralized SimCLR (kNN accuracy, same data and budget)",
            "",
            "Commands: below the table. Federated: FedAvg over the clients (with the server "
            "setting named in the case, if any), one "
            "local epoch per round; centralized: one model on the union of the clients' "
            "unlabeled images, one epoch per round, same learning-rate schedule, batch size and "
            "optimizer. kNN: each client's labeled 25% as the bank, its test split as queries.",
            "",
            "The baseline to beat is **raw pixels**: the same kNN (bank, queries, k, t) on the "
            "images' pixels, the better of [0, 1] and normalised; random init is the baseline "
            "that cannot fail.",
            "",
            "| case | client | raw pixels | random init | federated | centralized | "
            "fed / central |",
            "|---|---|---|---|---|---|---|",
        ]

        def cell(d: dict, key: str) -> str:
            return f"{d[key]:.4f}" if d.get(key) is not None else "-"

        for label, v in r["cases"].items():
            px = v.get("pixels", {})
            for i, name in enumerate(v["clients"]):
                f, c = v["federated"][f"knn_acc_c{i}"], v["centralized"][f"knn_acc_c{i}"]
                lines.append(
                    f"| {label} | {i} {name} | {cell(px, f'knn_pixels_c{i}')} | "
                    f"{cell(v['init'], f'knn_init_c{i}')} | {f:.4f} | {c:.4f} | {f / c:.3f} |"
                )
            f, c = v["federated"]["knn_acc_mean"], v["centralized"]["knn_acc_mean"]
            pm = list(px.values())  # already only the knn_pixels_c<i> keys
            pm_s = f"**{sum(pm) / len(pm):.4f}**" if pm else ""
            lines.append(
                f"| {label} | **mean** | {pm_s} | | **{f:.4f}** | **{c:.4f}** | **{f / c:.3f}** |"
            )
        lines += ["", "Target: federated >= 0.95x centralized in the IID case.", ""]
        if r.get("note"):
            lines += [r["note"], ""]
        for label, v in r["cases"].items():
            remark = f" — {v['note']}" if v.get("note") else ""
            lines.append(
                f"- {label}: `{v.get('command', r['command'])}` "
                f"({v.get('date', r['date'])}){remark}"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("section", choices=["throughput", "overhead", "fed-vs-central", "memory", "all"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, help="rounds (default: the config's; overhead: 3)")
    p.add_argument("--repeats", type=int, default=2, help="throughput repeats")
    p.add_argument(
        "--cases",
        nargs="+",
        choices=sorted(FVC_CASES),
        default=sorted(FVC_CASES),
        help="fed-vs-central cases to (re)run; the others' results are kept",
    )
    p.add_argument("--note", default="", help="a remark stored with the section (e.g. the load)")
    args = p.parse_args(argv)
    cmd = "python benchmarks/pretrain.py " + shlex.join(argv or sys.argv[1:])
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["_env"] = {
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, no GPU"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    stamp = {"command": cmd.strip(), "date": time.strftime("%Y-%m-%d"), "note": args.note}
    sections = (
        ["throughput", "overhead", "fed-vs-central", "memory"]
        if args.section == "all"
        else [args.section]
    )
    for section in sections:
        if section == "throughput":
            results["throughput"] = {**throughput(args.set, args.repeats), **stamp}
        elif section == "overhead":
            results["overhead"] = {"cases": overhead(args.set, args.rounds or 3), **stamp}
        elif section == "fed-vs-central":
            rounds = args.rounds or config(args.set).federation.rounds
            new = fed_vs_central(args.set, rounds, args.cases)
            old = results.get("fed_vs_central", {}).get("cases", {})
            for v in new.values():
                v.update(stamp)
            prev_note = results.get("fed_vs_central", {}).get("note", "")
            # a case's own remark stays with the case; the section's interpretation is kept
            results["fed_vs_central"] = {
                "cases": {**old, **new},
                **stamp,
                "note": prev_note,
            }
        elif section == "memory":
            results["default_run"] = {**memory(args.set, args.rounds), **stamp}
        harness.write_results(PAGE, results, render, json_path=RESULTS)
        print(f"[bench] wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
