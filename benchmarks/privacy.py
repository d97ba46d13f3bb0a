"""What privacy costs: accuracy against ε for DP-SGD and client-level DP, and SecAgg+'s round
time beside plain FedAvg. Writes ``docs/results/privacy.md`` (results kept in
``docs/results/privacy.json``, so one section can be re-run without losing the others).

    python benchmarks/privacy.py noniid     # DP-SGD on the non-IID MNIST study, ε in {1,2,4,8}
    python benchmarks/privacy.py central    # client-level DP on the same study, σ sweep
    python benchmarks/privacy.py heads --backbone runs/pretrain-default   # stage-two heads
    python benchmarks/privacy.py secagg     # SecAgg+ against plain FedAvg, side by side
    python benchmarks/privacy.py render     # rewrite the page from the json only

Every point is one real run of a launcher in a subprocess (``--out-dir``, default
``runs/bench-privacy``); its ``summary.json`` / ``results.json`` / ``metrics.jsonl`` feed the
tables. Run one section at a time on a quiet machine: seconds per round are wall-clock figures.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import harness  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "results" / "privacy.md"
RESULTS = PAGE.with_suffix(".json")
EPSILONS = [1.0, 2.0, 4.0, 8.0]
SIGMAS = [0.0, 0.03, 0.1, 0.3, 1.0]
#: labeled images per class of a head (0: the stage-one split's 25 %)
BUDGETS = [5, 20, 0]
CLIENTS = ["fashion_mnist", "mnist"]
#: Abadi et al. 2016, Table 1 / Fig. 3: DP-SGD on MNIST (PCA-60 + 1,000-unit MLP), δ = 1e-5
ABADI = {2.0: 95.0, 8.0: 97.0, 0.5: 90.0}
#: the page's sections, each kept in the JSON under its name
PARTS = ("noniid", "central", "heads", "secagg")


def launch(script: str, args: list[str], out_dir: Path, name: str) -> tuple[Path, str, float]:
    """Run ``launch/<script>`` into ``out_dir/name``; returns the run directory, the command
    as written on the page (without the name and folder) and the wall time."""
    cmd = ["python", f"launch/{script}", "--wandb", "disabled", *args]
    shown = shlex.join(cmd)
    cmd += ["--name", name, "--out-dir", str(out_dir), "--overwrite"]
    print(f"[bench] {name}: {shown}", flush=True)
    return out_dir / name, shown, harness.run_python(cmd, name)


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


def round_seconds(run: Path) -> float:
    """Median seconds of a run's rounds after the first (which starts the engine)."""
    s = [r["round_s"] for r in rows(run) if r["round"] > 1 and r.get("round_s")]
    return statistics.median(s) if s else float("nan")


def noniid_point(a, key: str, extra: list[str]) -> dict:
    args = ["--rounds", str(a.rounds), "--no-centralized", *extra]
    run, shown, wall = launch("noniid.py", args, a.out_dir, f"privacy-{key}")
    summ = json.loads((run / "summary.json").read_text())
    out = {k: summ.get(k) for k in ("fed_acc", "fed_acc_last5", "rounds", "s_per_round")}
    out.update(command=shown, wall_s=wall, privacy=summ.get("privacy"))
    last = rows(run)[-1]
    out["clipped"] = last.get("dp_clipped")
    out["update_norm_max"] = last.get("dp_update_norm_max")
    print(f"[bench] {key}: {out['fed_acc']:.4f} (last 5 {out['fed_acc_last5']:.4f})", flush=True)
    return out


def _tag(settings: list[str]) -> str:
    """A point's key suffix from its extra settings: ``train.lr=0.5`` -> ``lr0.5``."""
    return "".join(f"-{k.rpartition('.')[2].replace('_', '')}{v}"
                   for k, _, v in (x.partition("=") for x in settings))  # fmt: skip


def section_noniid(res: dict, a) -> None:
    extra = [*(a.dp_set or []), *([f"train.lr={a.dp_lr:g}"] if a.dp_lr else [])]
    tag = _tag(extra)
    points = {f"eps{e:g}{tag}": ["--set", f"privacy.dp_sgd.epsilon={e:g}", *extra]
              for e in (a.epsilons or EPSILONS)}  # fmt: skip
    # the non-private run with the same client and server settings, so a tuned private run is
    # compared with the same tuning as well as with the study's own settings
    points = {f"none{tag}": ["--set", *extra] if extra else []} | points
    for key, args in points.items():
        if key in res["noniid"] and not a.force:
            continue
        res["noniid"][key] = noniid_point(a, f"noniid-{key}", args)
        save(res, "noniid")


def section_central(res: dict, a) -> None:
    base = ["--set", "federation.weighted=false", f"privacy.central.clipping_norm={a.clip:g}"]
    if "unweighted" not in res["central"] or a.force:
        res["central"]["unweighted"] = noniid_point(a, "central-unweighted", base[:2])
        save(res, "central")
    for s in SIGMAS:
        key = f"sigma{s:g}"
        if key in res["central"] and not a.force:
            continue
        extra = [*base, f"privacy.central.noise_multiplier={s:g}"]
        res["central"][key] = noniid_point(a, f"central-{key}", extra)
        save(res, "central")


def head_point(a, client: str, budget: int, backbone: str, eps: float | None) -> dict:
    key = f"{client}-{backbone.replace('/', '_')}-l{budget}-" + (f"eps{eps:g}" if eps else "none")
    args = ["--client", client, "--backbone", backbone, "--labels-per-class", str(budget)]
    if eps:
        args += ["--set", f"privacy.dp_sgd.epsilon={eps:g}"]
        args += [f"finetune.lr={a.dp_head_lr:g}"] if a.dp_head_lr else []
    # a folder of its own: a raw-pixel head takes its clients from the newest stage-one run
    # in its --out-dir, which must not be one of this benchmark's SecAgg+ runs
    run, shown, wall = launch("finetune.py", args, a.out_dir / "heads", f"privacy-head-{key}")
    r = json.loads((run / "results.json").read_text())
    out = {k: r.get(k) for k in ("test_acc", "unlabeled_acc", "labeled", "epsilon", "dp_noise")}
    out.update(command=shown.replace(a.backbone, "runs/pretrain-default"), wall_s=wall)
    print(f"[bench] {key}: test {out['test_acc']:.4f}", flush=True)
    return out


def section_heads(res: dict, a) -> None:
    for client in CLIENTS:
        for budget in BUDGETS:
            for backbone, epsilons in ((a.backbone, [None, *EPSILONS]), ("pixels", [None, 8.0])):
                for eps in epsilons:
                    name = "stage-one" if backbone == a.backbone else "pixels"
                    key = f"{client}-{name}-l{budget}-" + (f"eps{eps:g}" if eps else "none")
                    if key in res["heads"] and not a.force:
                        continue
                    res["heads"][key] = head_point(a, client, budget, backbone, eps)
                    save(res, "heads")


def checkpoint_gap(a: Path, b: Path) -> float | None:
    """Largest element-wise difference of two runs' round-1 checkpoints (None: a run kept only
    its last checkpoints, as stage one does)."""
    from safetensors.torch import load_file

    first = Path("checkpoints") / "round_0001.safetensors"
    if not (a / first).is_file() or not (b / first).is_file():
        return None
    x, y = load_file(str(a / first)), load_file(str(b / first))
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def section_secagg(res: dict, a) -> None:
    from fedssl.config import SecAggConfig
    from fedssl.privacy import secagg_shares

    clients = {"pretrain.py": 4, "noniid.py": 10}
    setups = {
        "stage one, 4 clients (2 per dataset)": (
            "pretrain.py",
            ["--rounds", str(a.secagg_rounds), "--set",
             "data.clients=[fashion_mnist,fashion_mnist,mnist,mnist]", "federation.min_clients=4",
             "federation.weighted=false", "ssl.knn_queries=0"],
        ),
        "non-IID study, 10 clients": (
            "noniid.py",
            ["--rounds", str(a.secagg_rounds), "--no-centralized", "--set",
             "federation.weighted=false"],
        ),
    }  # fmt: skip
    for label, (script, args) in setups.items():
        if label in res["secagg"] and not a.force:
            continue
        tag = script.split(".")[0]
        plain, cmd, _ = launch(script, args, a.out_dir, f"privacy-secagg-{tag}-plain")
        secure, cmd2, _ = launch(
            script, [*args, "privacy.secagg.enabled=true"], a.out_dir, f"privacy-secagg-{tag}"
        )
        p, s = round_seconds(plain), round_seconds(secure)
        res["secagg"][label] = {
            "shares": " / ".join(map(str, secagg_shares(SecAggConfig(), clients[script]))),
            "plain_s": p,
            "secagg_s": s,
            "ratio": s / p,
            "max_diff_round1": checkpoint_gap(plain, secure),
            "bound": 2 * 8.0 / 2**22,
            "command_plain": cmd,
            "command": cmd2,
        }
        print(f"[bench] secagg {label}: {p:.2f} -> {s:.2f} s/round ({s / p:.2f}x)", flush=True)
        save(res, "secagg")


def _sci(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _eps(p: dict | None, part: str) -> str:
    if not p or part not in p:
        return "-"
    if part == "central":
        return f"{p['central']['epsilon']:.3g}"
    vals = [v["epsilon"] for v in p["dp_sgd"].values()]
    return f"{min(vals):.3g}-{max(vals):.3g}" if min(vals) != max(vals) else f"{vals[0]:.3g}"


def _settings(command: str) -> str:
    """The ``--set`` values of a command other than the DP-SGD budget, as the page shows them."""
    words = shlex.split(command)
    sets = words[words.index("--set") + 1 :] if "--set" in words else []
    kept = [x for x in sets if not x.startswith("privacy.dp_sgd.epsilon")]
    return ", ".join(x.replace("=", " ") for x in kept)


def _targets(res: dict) -> list[str]:
    """The page's opening: each target beside what was measured, met or not."""
    lines = []
    n, h, s = res["noniid"], res["heads"], res["secagg"]
    base = n.get("none", {}).get("fed_acc")
    eps8 = [(k, r["fed_acc"] / base) for k, r in n.items() if k.startswith("eps8") and base]
    if eps8:
        key, best = max(eps8, key=lambda kv: kv[1])
        verdict = "met" if best >= 0.95 else "**not met**"
        tag = key.partition("-")[2]
        same = n.get(f"none-{tag}" if tag else "none")
        shown = f"`{_settings(n[key]['command'])}`" if tag else "the study's settings"
        against = (f"; {n[key]['fed_acc'] / same['fed_acc']:.3f}x the non-private run with the "
                   "same settings") if same and tag else ""  # fmt: skip
        lines.append(f"- DP-SGD on the non-IID study at ε = 8 >= 0.95x non-private: {verdict}, "
                     f"{best:.3f}x at best ({shown}){against}")  # fmt: skip
    ratios = []
    for c in CLIENTS:
        none, e8 = h.get(f"{c}-stage-one-l0-none"), h.get(f"{c}-stage-one-l0-eps8")
        if none and e8:
            ratios.append(e8["test_acc"] / none["test_acc"])
    if ratios:
        verdict = "met" if min(ratios) >= 0.95 else "**not met**"
        shown = " / ".join(f"{r:.3f}x" for r in ratios)
        lines.append(f"- private heads at ε = 8, 25 % labels, >= 0.95x the non-private head on "
                     f"both clients: {verdict}, {shown}")  # fmt: skip
    for label, r in s.items():
        verdict = "met" if r["ratio"] <= 1.5 else "**not met**"
        lines.append(f"- SecAgg+ round time <= 1.5x FedAvg, {label}: {verdict}, {r['ratio']:.2f}x")
    return ["## Where the targets stand", "", *lines, ""] if lines else []


def render(res: dict) -> str:
    out = [
        "# Privacy: what it costs",
        "",
        f"Measured by `{res.get('command', 'python benchmarks/privacy.py')}` on {res['machine']}, "
        f"{res['date']} (load {res.get('load_at_start')} at start, {res.get('load_at_end')} at "
        "end); each row's own command is beside it. Guide: [docs/privacy.md](../privacy.md).",
        "",
    ]
    out += _targets(res)
    n = res["noniid"]
    if n:
        out += [
            "## DP-SGD on the non-IID MNIST study",
            "",
            f"Ten dominant-label clients (p = 0.55, ~6,000 images each), the MLP, "
            f"{next(iter(n.values()))['rounds']} rounds of FedAvg; every client trains with "
            "DP-SGD (per-sample clipping C = 1, Poisson batches of `train.batch_size` "
            "expected), its noise sized so that the whole run spends at most ε at δ = 1e-5 on "
            "that client's records. The study's client optimizer is SGD at lr 0.05, batch 32, "
            "without momentum; *other settings* change it, and a row with other settings has "
            "a non-private twin with the same settings (*x non-private, same settings*). Larger "
            "batches help DP-SGD: at a fixed ε the noise multiplier grows far slower than the "
            "batch (σ = 0.62 at 32, 0.94 at 256 over 20 rounds), so the noise on the mean "
            "gradient falls. Test accuracy of the merged model on the 10,000 test images.",
            "",
            "| ε per client | other settings | test acc (final) | last 5 | x non-private "
            "| x non-private, same settings | ε accounted | Abadi et al. 2016 (centralized) "
            "| command |",
            "|---|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        base = n.get("none", {}).get("fed_acc")
        for key, r in n.items():
            eps, _, tag = key.partition("-")
            eps = eps.removeprefix("eps")
            same = n.get(f"none-{tag}" if tag else "none")
            paper = ABADI.get(float(eps)) if eps != "none" else None
            ratio = f"{r['fed_acc'] / base:.3f}" if base else "-"
            ratio_same = f"{r['fed_acc'] / same['fed_acc']:.3f}" if same else "-"
            out.append(
                f"| {'∞ (no DP)' if eps == 'none' else eps} | {_settings(r['command']) or '-'} | "
                f"{_pct(r['fed_acc'])} | {_pct(r['fed_acc_last5'])} | {ratio} | {ratio_same} | "
                f"{_eps(r.get('privacy'), 'dp_sgd')} | {paper or '-'} | `{r['command']}` |"
            )
        out.append("")
    probes = res.get("noniid_probes") or []
    if probes:
        out += [
            "Client learning rates tried for DP-SGD at ε = 8 (5 rounds, so the noise is sized "
            "for 5 rounds; the non-private run reaches the accuracy in the first row):",
            "",
            "| train.lr | batch | test acc after 5 rounds | command |",
            "|---|---|---|---|",
        ]
        for p in probes:
            out.append(f"| {p['lr']} | {p['batch']} | {_pct(p['fed_acc'])} | `{p['command']}` |")
        out.append("")
    c = res["central"]
    if c:
        out += [
            "## Client-level DP on the same study",
            "",
            "DP-FedAvg: each client's update clipped to C, Gaussian noise of std σ·C/10 on the "
            "unweighted mean. ε is over the rounds run, at δ = 1e-5, without sampling "
            "amplification (every client takes part every round). It bounds what the model "
            "reveals about *any one client's whole data set*; with ten clients that is a strong "
            "demand, so useful accuracy comes only with a large ε.",
            "",
            "| σ | ε | test acc (final) | last 5 | updates clipped (last round) | command |",
            "|---|---|---|---|---|---|",
        ]
        for key, r in c.items():
            s = "no DP (unweighted FedAvg)" if key == "unweighted" else key.removeprefix("sigma")
            clipped = "-" if r.get("clipped") is None else f"{100 * r['clipped']:.0f} %"
            out.append(
                f"| {s} | {_eps(r.get('privacy'), 'central')} | {_pct(r['fed_acc'])} | "
                f"{_pct(r['fed_acc_last5'])} | {clipped} | `{r['command']}` |"
            )
        out.append("")
    h = res["heads"]
    if h:
        out += [
            "## DP-SGD stage-two heads on the default backbone",
            "",
            "A linear head on the frozen default stage-one backbone (and, as the baseline, on "
            "raw pixels), trained by DP-SGD on the client's labeled images only; ε per client "
            "at δ = 1e-5. A private head standardises its features with the statistics of "
            "the client's unlabeled images (the labeled ones' would leak), a non-private head "
            "with the labeled images' own; otherwise both are the default head (lr 0.1, 30 "
            "epochs, batch 128). Test accuracy on the dataset's 10,000 test images.",
            "",
            "| client | labels | features | no DP | ε = 1 | ε = 2 | ε = 4 | ε = 8 | ε=8 / no DP |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for client in CLIENTS:
            for budget in BUDGETS:
                for name in ("stage-one", "pixels"):
                    cells = []
                    for e in [None, *EPSILONS]:
                        r = h.get(f"{client}-{name}-l{budget}-" + (f"eps{e:g}" if e else "none"))
                        cells.append(_pct(r["test_acc"]) if r else "-")
                    none = h.get(f"{client}-{name}-l{budget}-none")
                    e8 = h.get(f"{client}-{name}-l{budget}-eps8")
                    ratio = f"{e8['test_acc'] / none['test_acc']:.3f}" if none and e8 else "-"
                    labels = f"{budget} per class" if budget else "25 %"
                    out.append(f"| {client} | {labels} | {name} | {' | '.join(cells)} | {ratio} |")
        any_cmd = next(iter(h.values()))["command"]
        out += [
            "",
            f"Each cell is one run, e.g. `{any_cmd}`. The supervised baseline (CL: the same "
            "architecture trained from scratch on the labeled images; not private, since "
            "DP-SGD cannot train its BatchNorm) reaches 80.14 / 96.69 test at 25 % and "
            "72.37 / 92.42 at 20 per class with the same data settings (4,000 images per "
            "client, seed 0) "
            "([multitask.md](multitask.md), `python launch/compare.py`).",
            "",
        ]
    s = res["secagg"]
    if s:
        out += [
            "## SecAgg+ against plain FedAvg",
            "",
            "Same runs with and without `privacy.secagg.enabled=true` (unweighted means, "
            "Flower's simulation on this machine); median seconds per round after the first. "
            "*max diff* is the largest element-wise difference of the two runs' round-1 "
            "models, against the bound of one quantisation step (2 · 8 / 2^22), where both "
            "runs kept their round-1 checkpoint (a run keeps only its last ones; "
            "tests/federation/test_secagg.py checks the bound on every tensor of a round). "
            "*shares*: each client's key shares / the threshold that rebuilds one, the default "
            "for the round's clients (`ceil(log2 n) + 1`: a client masks with that many "
            "neighbours minus one, SecAgg+'s O(log n)).",
            "",
            "| federation | shares | FedAvg s/round | SecAgg+ s/round | ratio | max diff "
            "| bound | command |",
            "|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for label, r in s.items():
            out.append(
                f"| {label} | {r.get('shares', '-')} | {r['plain_s']:.2f} | {r['secagg_s']:.2f} | "
                f"{r['ratio']:.2f} | "
                f"{_sci(r['max_diff_round1'])} | {r['bound']:.2e} | `{r['command']}` |"
            )
        out.append("")
    return "\n".join(out) + "\n"


def save(res: dict, section: str | None = None) -> None:
    """Write the JSON and the page; with ``section``, only that part of ``res`` (and the run's
    stamp) replaces what the JSON holds, so sections run side by side keep each other's."""
    if section is not None and RESULTS.is_file():
        kept = json.loads(RESULTS.read_text())
        kept.update({k: v for k, v in res.items() if k not in PARTS})
        kept[section] = res[section]
        res = kept
    harness.write_results(PAGE, res, render, json_path=RESULTS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("section", choices=["noniid", "central", "heads", "secagg", "render"])
    p.add_argument("--rounds", type=int, default=20, help="rounds of the non-IID runs")
    p.add_argument("--clip", type=float, default=1.0, help="client-level DP's clipping norm")
    p.add_argument("--dp-lr", type=float, help="noniid: the private runs' train.lr")
    p.add_argument("--epsilons", type=float, nargs="+", help="noniid: the budgets to run")
    p.add_argument(
        "--dp-set",
        nargs="+",
        metavar="KEY=VALUE",
        help="noniid: settings for the section's runs, private and not "
        "(e.g. train.momentum=0.9 federation.server_lr=2)",
    )
    p.add_argument("--secagg-rounds", type=int, default=6)
    p.add_argument("--backbone", default="runs/pretrain-default", help="stage-one run (heads)")
    p.add_argument("--dp-head-lr", type=float, help="finetune.lr of private heads")
    p.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "bench-privacy")
    p.add_argument("--force", action="store_true", help="re-measure points already kept")
    a = p.parse_args(argv)
    res = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for part in PARTS:
        res.setdefault(part, {})
    if a.section == "render":
        save(res)
        return 0
    res.update(harness.stamp("privacy.py", sys.argv[1:] if argv is None else argv))
    res.pop("load_at_end", None)
    {"noniid": section_noniid, "central": section_central, "heads": section_heads,
     "secagg": section_secagg}[a.section](res, a)  # fmt: skip
    save(res, a.section)
    print(f"[bench] wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
