"""The SSL frontier: every SSL method (and FedEMA / FedU where they apply) trained federated on
the default offline pair (Fashion-MNIST + MNIST clients, ``configs/pretrain/default.yaml``) for
the same training time on this machine, with the kNN monitor after every round against the
training seconds so far, and each client's raw-pixel kNN line (same bank, queries, k, t).

Writes ``docs/results/ssl-methods.md`` (+ ``.json``, + ``ssl-methods.png``: kNN vs minutes per
client with the raw-pixel line): per entry the final kNN per client, the minutes to cross the
raw-pixel line (or "not within the budget"), federated vs centralized at equal budget for the
best two entries, and the backbone's MACs per image. Beside raw-pixel kNN the page puts the
baselines that train on the same bank labels and are scored on the same queries: a linear head on
raw pixels, each entry backbone trained supervised from random init (CL), and kNN at random init
(``--baselines-only`` adds them to a page measured before they existed).

    python benchmarks/ssl_frontier.py                      # the page (about 45 minutes here)
    python benchmarks/ssl_frontier.py --budget-s 20 --entries simclr byol --out /tmp/f.md

How it runs: the rounds call the same functions as the Flower ClientApp
(:func:`fedssl.federation.pretraining.local_train` / ``local_evaluate``) and FedAvg
(:func:`fedssl.aggregation.merge`), in one process, the clients one after the other with both
cores each: the federated algorithm without the simulation engine's start-up, so that the budget
is spent on training. The budget counts training and merging only (not the kNN monitor). The
learning rate is constant (``train.lr_schedule=exp``, ``lr_decay=1``): the number of rounds a
budget holds is not known in advance. Each method trains with its ``TRAIN`` optimizer settings
(``fedssl/methods/ssl/<method>.py``) where it has them, else with the default config's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[1]

#: entry name -> (ssl.method, ssl.client_update, backbone or None for --backbone)
ENTRIES = {
    "simclr-resnet18": ("simclr", "none", "resnet18"),
    "simclr": ("simclr", "none", None),
    "byol": ("byol", "none", None),
    "byol+fedema": ("byol", "fedema", None),
    "simsiam": ("simsiam", "none", None),
    "simsiam+fedu": ("simsiam", "fedu", None),
    "moco": ("moco", "none", None),
    "vicreg": ("vicreg", "none", None),
    "barlowtwins": ("barlowtwins", "none", None),
    "dino": ("dino", "none", None),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs/pretrain/default.yaml"))
    p.add_argument(
        "--backbone",
        default=None,
        help="backbone of the entries that do not name one (default: the config's model.backbone)",
    )
    p.add_argument("--budget-s", type=float, default=180.0, help="training seconds per entry")
    p.add_argument("--entries", nargs="+", default=list(ENTRIES), choices=list(ENTRIES))
    p.add_argument(
        "--max-rounds",
        type=int,
        default=0,
        help="stop each entry after this many rounds (0: the budget alone decides); with a large "
        "--budget-s, entries compare at equal rounds, which a loaded machine does not change",
    )
    p.add_argument("--central", type=int, default=2, help="best entries also run centralized")
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides for all")
    p.add_argument("--out", default=str(ROOT / "docs/results/ssl-methods.md"))
    p.add_argument(
        "--baseline-epochs",
        type=int,
        default=30,
        help="epochs of the supervised baselines (linear on raw pixels; each backbone from "
        "random init, trained end to end)",
    )
    p.add_argument(
        "--baselines-only",
        action="store_true",
        help="(re)compute the supervised baselines of an existing page (its JSON's command) "
        "and rewrite it",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the page (and PNG) from its JSON, e.g. after editing its notes",
    )
    a = p.parse_args(argv)
    if not a.budget_s > 0:
        p.error(f"--budget-s must be positive (got {a.budget_s})")
    if a.max_rounds < 0:
        p.error(f"--max-rounds must be 0 or more (got {a.max_rounds})")
    if a.central < 0:
        p.error(f"--central must be 0 or more (got {a.central})")
    if a.baseline_epochs < 1:
        p.error(f"--baseline-epochs must be 1 or more (got {a.baseline_epochs})")
    if a.render_only and a.baselines_only:
        p.error("--render-only and --baselines-only exclude each other")
    return a


def entry_config(a, name: str, out_dir: str):
    from fedssl.config import load_config
    from fedssl.methods.ssl import method_class

    method, update, backbone = ENTRIES[name]
    over = [
        f"name={name}",
        f"out_dir={out_dir}",
        f"ssl.method={method}",
        f"ssl.client_update={update}",
        "train.lr_schedule=exp",
        "train.lr_decay=1.0",
        "train.threads=2",
        "tracking.wandb=disabled",
    ]
    backbone = backbone or a.backbone  # None: the config's
    if backbone:
        over.append(f"model.backbone={backbone}")
    over += [f"train.{k}={v}" for k, v in method_class(method).TRAIN.items()]
    return load_config(a.config, [*over, *a.set])


def default_backbone(a) -> str:
    """The backbone of the entries that do not name their own: ``--backbone``, else the config's
    (with ``--set``), whichever entry comes first."""
    from fedssl.config import load_config

    return a.backbone or load_config(a.config, a.set).model.backbone


def federated(cfg, budget_s: float, max_rounds: int = 0) -> list[dict]:
    """Rounds until ``budget_s`` training seconds (or ``max_rounds`` rounds, when > 0): each row
    the round, seconds so far, loss and kNN per client."""
    from fedssl.aggregation import merge
    from fedssl.federation.pretraining import initial_state, local_evaluate, local_train

    clients = range(len(cfg.data.clients))
    state, rows, spent, rnd = initial_state(cfg), [], 0.0, 0
    while spent < budget_s and not 0 < max_rounds <= rnd:
        rnd += 1
        t = time.perf_counter()
        replies = [local_train(cfg, pid, state, rnd) for pid in clients]
        weights = [m["num-examples"] for _, m in replies]
        state = merge([s for s, _ in replies], "avg", weights=weights)
        spent += time.perf_counter() - t
        knn = [local_evaluate(cfg, pid, state)["knn_acc"] for pid in clients]
        loss = [m["train_loss"] for _, m in replies]
        row = {"round": rnd, "s": spent, "knn": knn, "loss": loss}
        for key in ("divergence", "mu", "global_predictor"):  # the client-side update's
            if any(key in m for _, m in replies):
                row[key] = [m.get(key) for _, m in replies]
        rows.append(row)
        print(f"  round {rnd}: {spent:.0f}s loss {loss} knn {[round(x, 4) for x in knn]}")
    return rows


def centralized(cfg, budget_s: float) -> list[dict]:
    """One model on the union of the clients' unlabeled images, epochs until ``budget_s``."""
    import torch
    from torch.utils.data import ConcatDataset

    from fedssl import runtime
    from fedssl.methods.monitor import MonitorSettings, backbone_knn
    from fedssl.methods.pretrain import CENTRAL, build_ssl
    from fedssl.methods.views import views_dataset, views_loader

    torch.set_num_threads(2)
    torch.manual_seed(cfg.seed)
    module = build_ssl(cfg)
    ds = ConcatDataset([views_dataset(cfg, p) for p in range(len(cfg.data.clients))])
    rt = runtime.resolve(cfg)
    monitor = MonitorSettings.of(cfg)
    rows, spent, epoch = [], 0.0, 0
    while spent < budget_s:
        epoch += 1
        seed = runtime.round_seed(cfg.seed, epoch, CENTRAL)
        runtime.seed_everything(seed)
        t = time.perf_counter()
        with runtime.layout(module, rt):
            loader = views_loader(ds, cfg.train.batch_size, seed, rt)
            runtime.trainer(rt, max_epochs=1).fit(module, loader)
        spent += time.perf_counter() - t
        knn = [backbone_knn(monitor, p, module) for p in range(len(cfg.data.clients))]
        rows.append({"round": epoch, "s": spent, "knn": knn})
        print(f"  epoch {epoch}: {spent:.0f}s knn {[round(x, 4) for x in knn]}")
    return rows


def crossing(rows: list[dict], client: int, line: float) -> float | None:
    """Minutes of training until the client's kNN first reached ``line`` (None: never)."""
    for r in rows:
        if r["knn"][client] >= line:
            return r["s"] / 60
    return None


def run(a) -> dict:
    res = harness.stamp("ssl_frontier.py", a.argv)
    res.update({"budget_s": a.budget_s, "entries": {}})  # "backbone": once the config is read
    if a.max_rounds:
        res["max_rounds"] = a.max_rounds
    with tempfile.TemporaryDirectory(prefix="ssl-frontier-") as tmp:  # runs' client state
        _entries(a, res, tmp)
    return res


def _entries(a, res: dict, tmp: str) -> None:
    import torch

    from fedssl.methods.monitor import MonitorSettings, pixels_knn
    from fedssl.methods.pretrain import build_ssl
    from fedssl.methods.ssl_recipe import model_in_chans
    from fedssl.models.backbones import macs_per_image

    base = entry_config(a, a.entries[0], tmp)
    clients = list(base.data.clients)
    res["clients"] = clients
    res["backbone"] = default_backbone(a)
    res["knn_bn"] = base.ssl.knn_bn
    res["pixels"] = [pixels_knn(MonitorSettings.of(base), p) for p in range(len(clients))]
    print(f"[frontier] raw pixels: {res['pixels']}")
    baselines(a, res, tmp)
    for name in a.entries:
        cfg = entry_config(a, name, tmp)
        torch.manual_seed(0)
        macs = macs_per_image(build_ssl(cfg).backbone, cfg.model.image_size, model_in_chans(cfg))
        print(f"[frontier] {name} ({cfg.model.backbone}, {macs / 1e6:.0f} M MACs/image)")
        rows = federated(cfg, a.budget_s, a.max_rounds)
        res["entries"][name] = {
            "method": cfg.ssl.method,
            "client_update": cfg.ssl.client_update,
            "backbone": cfg.model.backbone,
            "macs": macs,
            "train": {
                "optimizer": cfg.train.optimizer,
                "lr": cfg.train.lr,
                "weight_decay": cfg.train.weight_decay,
            },
            "rows": rows,
        }
    ranked = sorted(res["entries"], key=lambda n: -sum(res["entries"][n]["rows"][-1]["knn"]))
    for name in ranked[: a.central]:
        print(f"[frontier] {name}, centralized")
        # equal training time: the federated entry's, when --max-rounds ended it
        fed_s = res["entries"][name]["rows"][-1]["s"] if a.max_rounds else a.budget_s
        res["entries"][name]["central"] = centralized(entry_config(a, name, tmp), fed_s)


def baselines(a, res: dict, tmp: str) -> None:
    """The references beside raw-pixel kNN, on the same bank labels and queries: a linear head on
    raw pixels, each entry backbone trained supervised from random init (CL), and kNN on each
    backbone at random init; into ``res["baselines"]``."""
    import torch

    from fedssl.methods.finetune import monitor_baselines
    from fedssl.methods.monitor import MonitorSettings, backbone_knn
    from fedssl.methods.pretrain import build_ssl

    first = {}  # backbone -> the first entry that uses it
    for name in a.entries:
        first.setdefault(entry_config(a, name, tmp).model.backbone, name)
    out = {"epochs": a.baseline_epochs, "pixels_linear": None, "supervised": {}, "init_knn": {}}
    for backbone, name in first.items():
        cfg = entry_config(a, name, tmp)
        clients = range(len(cfg.data.clients))
        kinds = ("supervised",) if out["pixels_linear"] else ("pixels_linear", "supervised")
        got = [monitor_baselines(cfg, p, a.baseline_epochs, kinds) for p in clients]
        if not out["pixels_linear"]:  # the same for every backbone: trained once
            out["pixels_linear"] = [g["pixels_linear"] for g in got]
        out["supervised"][backbone] = [g["supervised"] for g in got]
        torch.manual_seed(cfg.seed)
        module = build_ssl(cfg)
        out["init_knn"][backbone] = [
            backbone_knn(MonitorSettings.of(cfg), p, module) for p in clients
        ]
        print(
            f"[frontier] baselines: pixels linear {out['pixels_linear']}, {backbone} supervised "
            f"{out['supervised'][backbone]}, random-init kNN {out['init_knn'][backbone]}"
        )
    res["baselines"] = out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = res["clients"]
    fig, axes = plt.subplots(1, len(clients), figsize=(6 * len(clients), 4.5), squeeze=False)
    for c, ax in enumerate(axes[0]):
        for name, e in res["entries"].items():
            xs = [0.0] + [r["s"] / 60 for r in e["rows"]]
            ys = [None] + [r["knn"][c] for r in e["rows"]]
            ax.plot(xs[1:], ys[1:], marker=".", label=name)
        ax.axhline(res["pixels"][c], color="k", ls="--", label="raw pixels")
        ax.set_title(f"{clients[c]} (client {c})")
        ax.set_xlabel("training minutes (federated, 2 clients)")
        ax.set_ylabel("kNN accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_baselines(res: dict) -> list[str]:
    """The baseline table (empty on pages measured before it existed)."""
    b = res.get("baselines")
    if not b:
        return []
    clients, ep = res["clients"], b["epochs"]

    def row(what: str, accs: list[float]) -> str:
        return f"| {what} | " + " | ".join(f"{x:.4f}" for x in accs) + " |"

    lines = [
        "Baselines on the same bank and queries. kNN scores a frozen representation without "
        "training on the labels; the supervised rows train on the bank's labels (stage two's "
        f"recipe, {ep} epochs, `fedssl.methods.finetune.monitor_baselines`) and are scored "
        "top-1 on the same queries. A linear head on an SSL backbone is the like-for-like "
        "comparison with them (docs/results/multitask.md)."
        + (f" Measured by `{b['command']}` on the page's config." if "command" in b else ""),
        "",
        "| baseline | " + " | ".join(clients) + " |",
        "|---|" + "---:|" * len(clients),
        row("kNN on raw pixels", res["pixels"]),
        row("linear head on raw pixels", b["pixels_linear"]),
    ]
    for backbone, accs in b["supervised"].items():
        lines.append(row(f"{backbone} from random init, supervised (CL)", accs))
    for backbone, accs in b["init_knn"].items():
        lines.append(row(f"kNN on {backbone} at random init", accs))
    return [*lines, ""]


#: how a page's kNN treated BatchNorm statistics (``ssl.knn_bn``; pages measured before the
#: setting existed scored with the merged ones)
STATISTICS = {
    "client": "each client with its own BatchNorm statistics (`ssl.knn_bn: client`)",
    "merged": "with the merged backbone's BatchNorm statistics (`ssl.knn_bn: merged`; "
    "each client's own add about 2 points on MNIST: docs/results/stage-one.md)",
}


def render(res: dict) -> str:
    clients, px = res["clients"], res["pixels"]
    budget_min = res["budget_s"] / 60
    length = f"{budget_min:.1f} minutes of training on this machine"
    if res.get("max_rounds"):
        length = f"{res['max_rounds']} rounds (or {length}, whichever came first)"
    lines = [
        "# " + res.get("title", "SSL methods: the frontier on the default offline pair"),
        "",
        f"Measured by `{res['command']}` on {res['date']} ({res['machine']}; load "
        f"{res['load_at_start']} at start, {res.get('load_at_end')} at end).",
        "",
        f"Every entry trains federated (FedAvg, {len(clients)} clients: "
        f"{', '.join(clients)}) for {length}; kNN "
        "(k=20, t=0.1, cosine) of the merged backbone after every round, with each client's "
        "labeled images as the bank and 1,000 test images as queries, "
        + STATISTICS[res.get("knn_bn", "merged")]
        + ". The baseline to beat is "
        "**kNN on raw pixels with the same bank and queries** (the better of [0, 1] and "
        "normalised pixels): "
        + ", ".join(f"{c} **{p:.4f}**" for c, p in zip(clients, px, strict=True))
        + ". How the rounds run: see the docstring of `benchmarks/ssl_frontier.py`.",
        "",
        *render_baselines(res),
        f"![kNN vs training minutes]({res.get('png', 'ssl-methods.png')})",
        "",
        "| entry | backbone | M MACs / image | optimizer, lr | rounds | "
        + " | ".join(f"kNN {c}" for c in clients)
        + " | "
        + " | ".join(f"min to raw pixels ({c})" for c in clients)
        + " |",
        "|---|---|---:|---|---:|" + "---:|" * (2 * len(clients)),
    ]
    for name, e in res["entries"].items():
        last = e["rows"][-1]
        cross = []
        for c in range(len(clients)):
            m = crossing(e["rows"], c, px[c])
            cross.append(f"{m:.1f}" if m is not None else "not within the budget")
        knn = [f"{k:.4f}" + (" (above)" if k >= px[c] else "") for c, k in enumerate(last["knn"])]
        lines.append(
            f"| {name} | {e['backbone']} | {e['macs'] / 1e6:.0f} | "
            f"{e['train']['optimizer']} {e['train']['lr']:g} | {last['round']} | "
            + " | ".join(knn)
            + " | "
            + " | ".join(cross)
            + " |"
        )
    central = {n: e for n, e in res["entries"].items() if "central" in e}
    if central:
        lines += [
            "",
            "## Federated vs centralized at equal training time",
            "",
            "Centralized: one model on the union of the clients' unlabeled images, epochs until "
            "the same budget; scored by the same monitor.",
            "",
            "| entry | "
            + " | ".join(f"fed {c} | central {c} | fed/central {c}" for c in clients)
            + " |",
            "|---|" + "---:|" * (3 * len(clients)),
        ]
        for name, e in central.items():
            fed, cen = e["rows"][-1]["knn"], e["central"][-1]["knn"]
            cells = [f"{f:.4f} | {k:.4f} | {f / k:.3f}x" for f, k in zip(fed, cen, strict=True)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = res.get("notes", [])
    return "\n".join([*lines, *([""] if notes else []), *notes]) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(a.out)
    old = out.with_suffix(".json")
    if a.render_only:
        res = json.loads(old.read_text())
    elif a.baselines_only:
        res = json.loads(old.read_text())
        page = parse_args(shlex.split(res["command"])[2:])  # the run the page measured
        page.baseline_epochs = a.baseline_epochs
        with tempfile.TemporaryDirectory(prefix="ssl-frontier-") as tmp:
            baselines(page, res, tmp)
        res["baselines"]["command"] = harness.stamp("ssl_frontier.py", a.argv)["command"]
    else:
        res = run(a)
        # the page's hand-written title and reading of the numbers live in its JSON
        kept = json.loads(old.read_text()) if old.is_file() else {}
        res.update({k: kept[k] for k in ("title", "notes") if k in kept})
        res.setdefault("notes", [])
    res["png"] = out.with_suffix(".png").name  # the page links its own plot
    plot(res, out.with_suffix(".png"))
    harness.write_results(out, res, render)
    print(f"[frontier] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
