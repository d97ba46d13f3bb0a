"""A stage-one round against the model compute it holds, side by side in one sitting.

    python benchmarks/rounds.py                       # the default job, two backbones (~9 min)
    python benchmarks/rounds.py --rounds 4 --backbones sresnet10_w4 --out /tmp/rounds.md

For each backbone (the default ``sresnet10_w16`` and the near-free ``sresnet10_w4``):

1. **Pure compute**: a plain PyTorch loop over pre-made tensors doing one round's training
   steps of each client (its unlabeled images // ``train.batch_size`` SimCLR steps on two
   ready views of a batch, forward + backward + SGD, one thread, channels-last as
   ``fedssl.runtime`` trains on a CPU) — the clients' loops alone, then both clients at once
   in two processes, as the simulation runs them on this machine.
2. **Rounds**: ``python launch/pretrain.py --rounds N`` in Flower's simulation engine, three
   ways: ``before`` (what the default did before the image cache: ``ssl.views=lightly
   data.cache=off federation.eval_every=1``), ``default`` (the default config: batched views
   from the image cache, the kNN monitor every ``federation.eval_every`` rounds and after the
   last) and ``default, kNN every round`` (``federation.eval_every=1``). Mean seconds per round
   from round 2, rounds with and without the monitor apart, and where the time went (the
   metrics' breakdown: the slowest client's steps, data, other, evaluation; engine; server).

It writes ``docs/results/rounds.md`` (``--out``) and its JSON, with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "pretrain" / "default.yaml"
PAGE = ROOT / "docs" / "results" / "rounds.md"
BACKBONES = ("sresnet10_w16", "sresnet10_w4")
#: the targets per backbone: a default round <= this many times its pure compute
TARGETS = {"sresnet10_w16": 1.2, "sresnet10_w4": 1.3}
WAYS = {
    "before": ["ssl.views=lightly", "data.cache=off", "federation.eval_every=1"],
    "default": [],
    "default, kNN every round": ["federation.eval_every=1"],
}
PARTS = ("steps", "data", "other", "eval", "engine", "server")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=6, help="rounds per run (means from round 2)")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", default=str(PAGE), help="results page (default: %(default)s)")
    p.add_argument("--pure-worker", nargs=3, metavar=("BACKBONE", "CLIENT", "SETS"),
                   help=argparse.SUPPRESS)  # fmt: skip
    a = p.parse_args(argv)
    if a.rounds < 2 and not a.pure_worker:
        p.error(f"--rounds must be 2 or more: means start at round 2 (got {a.rounds})")
    return a


def _config(backbone: str, overrides: list[str]):
    from fedssl.config import load_config

    return load_config(DEFAULT, [*overrides, f"model.backbone={backbone}"])


def pure_worker(backbone: str, client: int, overrides: list[str]) -> dict:
    """One client's round of training steps over pre-made views: a plain loop, timed."""
    import torch

    from fedssl import runtime
    from fedssl.data.client_images import client_task
    from fedssl.methods.pretrain import build_ssl

    cfg = _config(backbone, overrides)
    torch.set_num_threads(max(1, cfg.train.threads))
    b, side = cfg.train.batch_size, cfg.model.image_size
    steps = len(client_task(cfg.data, client).unlabeled) // b
    torch.manual_seed(client)
    module = build_ssl(cfg).train()
    rt = runtime.resolve(cfg)
    if rt.channels_last:
        module.to(memory_format=torch.channels_last)
    opt = module.configure_optimizers()
    chans = module.backbone_in_chans
    views = [[torch.randn(b, chans, side, side) for _ in range(2)] for _ in range(4)]

    def step(v):
        loss = module.loss(v)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(2):  # warm-up
        step(views[i])
    t = time.perf_counter()
    for i in range(steps):
        step(views[i % len(views)])
    return {"client": client, "steps": steps, "seconds": time.perf_counter() - t}


def pure(backbone: str, clients: int, overrides: list[str]) -> dict:
    """Each client's pure compute alone (one process after the other), then all at once."""

    def spawn(c):
        cmd = [sys.executable, __file__, "--pure-worker", backbone, str(c), json.dumps(overrides)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def result(p):
        out, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"pure-compute worker failed (exit {p.returncode})")
        return json.loads(out.strip().splitlines()[-1])

    alone = [result(spawn(c)) for c in range(clients)]
    together = [result(p) for p in [spawn(c) for c in range(clients)]]
    return {
        "steps": [r["steps"] for r in alone],
        "alone_s": [r["seconds"] for r in alone],
        "together_s": [r["seconds"] for r in together],
    }


def run_rounds(backbone: str, way: str, rounds: int, overrides: list[str], tmp: Path) -> dict:
    """``launch/pretrain.py --rounds N`` one way; its rows' round times and breakdown."""
    from fedssl.experiments.pretrain import time_breakdown
    from fedssl.runs import RunDir

    name = f"{backbone}-{way.split(',')[0]}-{len(list(tmp.iterdir()))}"
    sets = [*overrides, *WAYS[way], f"model.backbone={backbone}", f"out_dir={tmp}",
            f"name={name}", "tracking.wandb=disabled"]  # fmt: skip
    cmd = [sys.executable, str(ROOT / "launch" / "pretrain.py"), "--rounds", str(rounds),
           "--set", *sets]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"{way} on {backbone} failed (exit {proc.returncode}):\n{tail}")
    rows = [r for r in RunDir(tmp / name).metrics() if r.get("round", 0) >= 1]
    clients = sum(1 for k in rows[0] if k.startswith("train_s_c"))
    later = [r for r in rows if r["round"] >= 2]
    scored = [r for r in later if r.get("knn_acc_mean") is not None]
    plain = [r for r in later if r.get("knn_acc_mean") is None]

    def mean(rs):
        return sum(float(r["round_s"]) for r in rs) / len(rs) if rs else None

    return {
        "command": "python launch/pretrain.py --rounds {} --set {}".format(rounds, " ".join(sets)),
        "wall_s": wall,
        "first_round_s": float(rows[0]["round_s"]),
        "round_s": [float(r["round_s"]) for r in rows],
        "mean_s": mean(later),
        "mean_monitored_s": mean(scored),
        "mean_unmonitored_s": mean(plain),
        "breakdown": time_breakdown(rows, clients),
        "breakdown_unmonitored": time_breakdown([rows[0], *plain], clients) if plain else {},
        "eval_every": _config(backbone, [*overrides, *WAYS[way]]).federation.eval_every,
    }


def full_run_mean(r: dict, rounds: int) -> float:
    """Seconds per round over a run of ``rounds`` with this way's ``eval_every`` (the monitor
    on every k-th round and the last), from the measured rounds with and without it."""
    k = r["eval_every"]
    if r["mean_unmonitored_s"] is None:
        return r["mean_monitored_s"]
    scored = len({n for n in range(1, rounds + 1) if n % k == 0 or n == rounds})
    return (scored * r["mean_monitored_s"] + (rounds - scored) * r["mean_unmonitored_s"]) / rounds


def measure(a) -> dict:
    res = {**harness.stamp("rounds.py"), "rounds": a.rounds, "overrides": a.set, "backbones": {}}
    rounds_full = _config(a.backbones[0], a.set).federation.rounds
    res["full_run_rounds"] = rounds_full
    with tempfile.TemporaryDirectory(prefix="fedssl-rounds-") as tmp:
        for bb in a.backbones:
            clients = len(_config(bb, a.set).data.clients)
            print(f"[rounds] {bb}: pure compute ...", flush=True)
            entry = {"pure": pure(bb, clients, a.set), "ways": {}}
            for way in WAYS:
                print(f"[rounds] {bb}: {way}, {a.rounds} rounds ...", flush=True)
                r = run_rounds(bb, way, a.rounds, a.set, Path(tmp))
                r["full_run_mean_s"] = full_run_mean(r, rounds_full)
                entry["ways"][way] = r
                print(f"[rounds] {bb}: {way}: {r['full_run_mean_s']:.2f} s/round", flush=True)
            res["backbones"][bb] = entry
    return res


def _f(x, fmt=".2f"):
    return "—" if x is None else f"{x:{fmt}}"


def render(res: dict) -> str:
    lines = [
        "# Stage-one rounds against their model compute",
        "",
        f"Measured {res['date']} on {res['machine']}; load (1/5/15 min) "
        f"{res['load_at_start']} at the start, {res.get('load_at_end')} at the end.",
        "",
        "```",
        res["command"],
        "```",
        "",
        "**Pure compute**: one round's training steps of each client as a plain PyTorch loop "
        "over pre-made views (SimCLR forward + backward + SGD, one thread, channels-last), "
        "each client alone and both at once (as the simulation runs them on this machine). "
        f"**Rounds**: `launch/pretrain.py --rounds {res['rounds']}` in the simulation engine, "
        "mean seconds per round from round 2. *before*: lightly's PIL views through a "
        "DataLoader and the kNN monitor every round (the default until the image cache); "
        "*default*: batched views from the image cache, the monitor every "
        "`federation.eval_every` rounds and after the last; *per run* weighs the rounds with "
        f"and without the monitor as a {res['full_run_rounds']}-round default run has them.",
        "",
        "| backbone | pure, alone (s) | pure, clients at once (s) | way | with kNN (s) | "
        "without kNN (s) | per run (s) | x pure at once | x pure alone | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for bb, e in res["backbones"].items():
        alone, together = max(e["pure"]["alone_s"]), max(e["pure"]["together_s"])
        for way, r in e["ways"].items():
            m = r["full_run_mean_s"]
            target = TARGETS.get(bb)
            ok = "" if way == "before" or target is None else (
                f"<= {target}x: {'met' if m <= target * together else 'missed'}")  # fmt: skip
            lines.append(
                f"| {bb} | {alone:.2f} | {together:.2f} | {way} | {_f(r['mean_monitored_s'])} | "
                f"{_f(r['mean_unmonitored_s'])} | {m:.2f} | {m / together:.2f} | "
                f"{m / alone:.2f} | {ok} |"
            )
    lines += [
        "",
        "## Where a round goes",
        "",
        "Mean seconds per round from round 2 (the metrics' breakdown, `fedssl.experiments."
        "pretrain.time_breakdown`): *steps* the slowest client's training steps (views "
        "included), *data* its images and batches, *other* its module, state and Trainer, "
        "*eval* the slowest client's kNN monitor (BatchNorm re-estimation, bank and query "
        "features), *engine* Flower and Ray (messages, scheduling), *server* merge, "
        "checkpoint and plot.",
        "",
        "| backbone | way | rounds | " + " | ".join(PARTS) + " | round |",
        "|---|---|---|" + "---|" * (len(PARTS) + 1),
    ]
    for bb, e in res["backbones"].items():
        for way, r in e["ways"].items():
            for label, b in (("all", r["breakdown"]), ("without kNN", r["breakdown_unmonitored"])):
                if not b or (label != "all" and not r["mean_unmonitored_s"]):
                    continue
                cells = " | ".join(f"{b[p]:.2f}" for p in PARTS)
                lines.append(f"| {bb} | {way} | {label} | {cells} | {b['round']:.2f} |")
    lines += ["", "Commands of each run:", ""]
    for bb, e in res["backbones"].items():
        for way, r in e["ways"].items():
            lines.append(
                f"- {bb}, {way}: `{r['command']}` (first round {r['first_round_s']:.1f} s)"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.pure_worker:
        bb, client, sets = a.pure_worker
        print(json.dumps(pure_worker(bb, int(client), json.loads(sets))))
        return 0
    os.environ.setdefault("WANDB_MODE", "disabled")
    res = measure(a)
    page = harness.write_results(a.out, res, render)
    print(f"[rounds] wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
