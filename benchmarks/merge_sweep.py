"""Merged accuracy vs local steps per round (= vs bytes communicated), V and H environments.

    python benchmarks/merge_sweep.py                       # steps 469, 100, 25; 5 epochs each
    python benchmarks/merge_sweep.py --steps 469 50 --epochs 3 --envs h

Every point trains each client for the same number of local mini-batches (``--epochs`` passes
over its 30,000 images, batch 64); only how often the two clients merge (FedAvg) changes. Fewer
local steps per round means more rounds, hence more bytes sent. Runs go through the real Flower
simulation (``launch/merge.py``); the table and a PNG go to ``docs/results/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from fedssl.plots import plot_curves  # noqa: E402
from fedssl.runs import RunDir  # noqa: E402


def launch_main():
    spec = importlib.util.spec_from_file_location("launch_merge", ROOT / "launch" / "merge.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, nargs="+", default=[469, 100, 25])
    p.add_argument("--epochs", type=float, default=5.0, help="local epochs per client in total")
    p.add_argument("--envs", nargs="+", default=["v", "h"])
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides for every run")
    p.add_argument("--tag", default="", help="suffix of run names and output files")
    p.add_argument("--out-dir", default="runs")
    args = p.parse_args(argv)
    run = launch_main()
    steps_per_epoch = math.ceil(30000 / 64)
    results = []
    for env in args.envs:
        for steps in args.steps:
            rounds = max(1, math.ceil(args.epochs * steps_per_epoch / steps))
            name = f"sweep{args.tag}-{env}-s{steps}"
            t = time.perf_counter()
            rc = run(
                [
                    "--env",
                    env,
                    "--method",
                    "avg",
                    "--rounds",
                    str(rounds),
                    "--local-steps",
                    str(steps),
                    "--name",
                    name,
                    "--out-dir",
                    args.out_dir,
                    "--wandb",
                    "disabled",
                    "--set",
                    f"federation.eval_every={max(1, rounds // 5)}",
                    *args.set,
                ]
            )
            if rc:
                return rc
            rows = [
                r
                for r in RunDir(Path(args.out_dir) / name).metrics()
                if r.get("merged_acc") is not None
            ]
            bytes_per_round = 2 * rows[-1]["bytes_up"]  # bytes_up covers both clients; x2 for down
            results.append(
                {
                    "env": env,
                    "steps": steps,
                    "rounds": rounds,
                    "acc": rows[-1]["merged_acc"],
                    "mb": rounds * bytes_per_round / 1e6,
                    "s": time.perf_counter() - t,
                }
            )
            print(f"[sweep] {results[-1]}", flush=True)
    tag = args.tag
    cmd = "python benchmarks/merge_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Command: `{cmd.strip()}`",
        "",
        "| env | local steps / round | rounds | MB sent (2 clients, up + down) "
        "| merged test acc | wall s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['env'].upper()} | {r['steps']} | {r['rounds']} | {r['mb']:.1f} "
        f"| {100 * r['acc']:.2f} | {r['s']:.0f} |"
        for r in results
    ]
    out = ROOT / "docs" / "results" / f"merge-sweep{tag}.md"
    out.write_text("\n".join(lines) + "\n")
    series = {}
    for env in args.envs:
        pts = [r for r in results if r["env"] == env]
        series[f"{env.upper()}-environment"] = ([r["mb"] for r in pts], [r["acc"] for r in pts])
    plot_curves(
        series,
        ROOT / "docs" / "results" / f"merge-sweep{tag}.png",
        title=f"FedAvg, {args.epochs:g} local epochs per client in total",
        xlabel="MB communicated (more rounds to the right)",
        ylabel="merged test accuracy",
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
