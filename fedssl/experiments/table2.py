"""Paper 003's Table 2 (``launch/compare.py``): CL against FL+SSL per client, written to
docs/results/multitask.md.

Examples::

    python launch/compare.py                  # offline pair (Fashion-MNIST + MNIST), ~45 min CPU
    python launch/compare.py --pretrain runs/pretrain-default --labels 0 20
    python launch/compare.py --pretrain-config configs/pretrain/paper.yaml \\
        --set data.roots.intel_scene=/data/intel     # the paper's clients (GPU advised)

Methods, each trained and scored per client on the same split (the stage-one run's):

* **CL** (the paper's baseline): the same backbone architecture from random weights, trained
  supervised (``mode full``) on the client's labeled images only, no SSL pretraining;
* **raw pixels (linear)**: no backbone, the same linear head (standardised features, same
  steps and optimizer as the FL+SSL linear head) on the images' raw pixels: the baseline a
  learned representation must beat;
* **FL+SSL (linear)**: the federated stage-one backbone, frozen, with the client's linear head;
* **FL+SSL (partial)**: the same, its last stage retrained too (the paper's "minimal retraining");
* **FL+SSL (full)**: the same backbone as the starting point of a full fine-tuning (backbone at a
  tenth of the head's learning rate) — CL with SSL initialisation;
* **central SSL (linear)**, a reference: SimCLR on the union of the clients' unlabeled images on
  one machine (same images, epochs and schedule as stage one), frozen, with the client's head.

Label settings: ``--labels all`` (or 0) is the paper's (every image of the client's labeled
25%); ``--labels N`` keeps N labeled images per class (label-scarce); several at once:
``--labels 1,5,10,20,all`` (the label-scarce protocol). Every head gets the same number
of optimisation steps (``--steps``) whatever its labeled set's size. Scores are ``unlabeled_acc``
(the client's unlabeled 75%, the paper's protocol) and ``test_acc`` (the dataset's test split).
A stage-one run that already finished (``--pretrain``) is reused; otherwise it is run first.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedssl.config import ConfigError, config_diff, load_config, save_config, to_dict

__all__ = [
    "Options",
    "PAPER",
    "METHODS",
    "parse_labels",
    "stage_one",
    "central_ssl",
    "run_heads",
    "run",
    "render",
    "print_configs",
]

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_CONFIG = ROOT / "configs" / "pretrain" / "default.yaml"
FINETUNE_CONFIG = ROOT / "configs" / "finetune" / "default.yaml"

#: Paper 003, Table 2 (Acc@1 %, ResNet-50, clients Flowers102 and Intel Image Classification).
PAPER = {
    "clients": ["flower102", "intel_scene"],
    "CL": [29.926, 83.288],
    "FL+SSL": [53.971, 88.219],
    "average_gain": 14.488,
}

#: method -> (backbone source, finetune overrides)
METHODS = {
    "CL": ("none", ["finetune.mode=full"]),  # random init learns at the head's rate
    "raw pixels (linear)": ("pixels", ["finetune.mode=linear"]),
    "FL+SSL (linear)": ("federated", ["finetune.mode=linear"]),
    "FL+SSL (partial)": ("federated", ["finetune.mode=partial"]),
    "FL+SSL (full)": ("federated", ["finetune.mode=full"]),
    "central SSL (linear)": ("central", ["finetune.mode=linear"]),
}


def parse_labels(values: list[str] | str) -> list[int]:
    """``["1,5", "10", "all"]`` -> ``[1, 5, 10, 0]``: label budgets per class, ``all`` (or 0)
    for the whole labeled part, comma- or space-separated, in the order given, no repeats.

    Raises:
        ConfigError: a budget that is neither ``all`` nor a non-negative integer.
    """
    items = [values] if isinstance(values, str) else list(values)
    out: list[int] = []
    for item in items:
        for tok in filter(None, (t.strip() for t in str(item).split(","))):
            if tok.lower() == "all":
                n = 0
            else:
                try:
                    n = int(tok)
                except ValueError:
                    n = -1
                if n < 0:
                    raise ConfigError(
                        f"--labels: {tok!r} is not a label budget; use images per class "
                        "(e.g. 1,5,10,20) or all"
                    )
            if n not in out:
                out.append(n)
    if not out:
        raise ConfigError("--labels: no label budget given")
    return out


@dataclass
class Options:
    """What ``launch/compare.py`` asks for (its options, same names)."""

    pretrain: str | None = None  # a finished stage-one run to use (None: run one)
    pretrain_config: str = str(PRETRAIN_CONFIG)
    labels: list[int] = field(default_factory=lambda: [0, 20])  # per class; 0: all labeled
    steps: int = 300  # optimisation steps per head
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    out_dir: str = "runs/compare"
    results: str = str(ROOT / "docs" / "results" / "multitask.md")
    set: list[str] = field(default_factory=list)  # stage-one overrides
    finetune_set: list[str] = field(default_factory=list)  # every head's overrides
    jobs: int = 0  # heads side by side (0: one per client, at most one per CPU)
    wandb: str = "offline"

    def __post_init__(self):
        self.labels = parse_labels([str(x) for x in self.labels])
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        if any(s.startswith("privacy.dp_sgd.") for s in self.finetune_set):
            trained = [m for m in self.methods if "finetune.mode=linear" not in METHODS[m][1]]
            if trained:
                linear = [m for m in METHODS if "finetune.mode=linear" in METHODS[m][1]]
                raise ConfigError(
                    f"privacy.dp_sgd trains linear heads only, and {trained} train a backbone "
                    f"(its BatchNorm mixes a batch's examples): choose --methods among {linear}"
                )


def _finished(run: Path, rounds: int) -> bool:
    state = run / "state.json"
    return (
        (run / "backbone.safetensors").is_file()
        and state.is_file()
        and (json.loads(state.read_text()).get("round", 0) >= rounds)
    )


def stage_one_config(args):
    """``(config, run dir)`` of the federated stage one: a given run's, or ``--pretrain-config``
    with ``--set``."""
    cfg = load_config(args.pretrain_config, [*args.set, f"tracking.wandb={args.wandb}"])
    run = Path(args.pretrain) if args.pretrain else cfg.run_dir()
    if args.pretrain and (run / "config.yaml").is_file():
        cfg = load_config(run / "config.yaml", [f"tracking.wandb={args.wandb}"])
        cfg.out_dir, cfg.name = str(run.parent), run.name
    return cfg, run


def stage_one(args) -> tuple[Path, float | None]:
    """The federated backbone's run directory and the seconds spent on it now: a finished run
    is reused, an interrupted one (same config) resumed from its last round, else one is run."""
    from fedssl.federation.preflight import preflight
    from fedssl.federation.simulation import simulate
    from fedssl.runs import RunDir, holds_run

    cfg, run = stage_one_config(args)
    if args.pretrain and not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} is not a stage-one run directory (no config.yaml)")
    started = holds_run(run) and (run / "config.yaml").is_file()
    if started and not args.pretrain:
        # a run of the same name but another recipe must not stand in (or be resumed) silently
        saved = load_config(run / "config.yaml", [f"tracking.wandb={args.wandb}"])
        diff = config_diff(saved, cfg, ignore=("tracking", "out_dir", "train.threads", "runtime"))
        if diff:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} asked" for k, a, b in diff[:6])
            raise ConfigError(
                f"{run} already holds a stage-one run with another config ({shown}"
                f"{'; ...' if len(diff) > 6 else ''}). Give this one a new name "
                f"(--set name=<new>), or reuse that run as it is (--pretrain {run})."
            )
    if _finished(run, cfg.federation.rounds):
        print(f"[compare] stage one: reusing {run}", flush=True)
        return run, None
    backend = preflight(cfg)
    done = RunDir(run).state().get("round", 0) if started else 0
    resume = started and "checkpoint" in RunDir(run).state()
    if resume:
        print(f"[compare] stage one: resuming {run} after round {done}", flush=True)
    else:
        if started:  # interrupted before its first round: nothing to resume, keep it aside
            from fedssl.runs import claim_run_dir

            print(f"[compare] stage one: {run} has no finished round; kept at "
                  f"{claim_run_dir(run, overwrite=True)}", flush=True)  # fmt: skip
        print(f"[compare] stage one: federated SimCLR -> {run}", flush=True)
    t = time.perf_counter()
    simulate(cfg, resume=resume, backend=backend)  # its run directory is free or resumed
    return run, time.perf_counter() - t


def check_backbones(run: Path) -> None:
    """Every client's FL+SSL backbone loads from ``run`` (the merged one, or with
    ``ssl.local_layers`` the client's own layers added), before any head trains.

    Raises:
        ConfigError: a client's backbone does not load (what
            :func:`fedssl.models.backbones.load_backbone` says).
    """
    from fedssl.models.backbones import load_backbone

    for pid, name in enumerate(load_config(run / "config.yaml").data.clients):
        try:
            load_backbone(run / "backbone.safetensors", name, pid)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"stage one {run}: client {pid} ({name}): {err}") from err


def central_ssl(run: Path) -> tuple[Path, float | None]:
    """The centralized-SSL reference backbone (same data, epochs and schedule as ``run``)."""
    from fedssl.methods.pretrain import pretrain_centralized

    cfg = load_config(run / "config.yaml")
    cfg.name = f"{run.name}-central"
    cfg.out_dir = str(run.parent)
    out = cfg.run_dir()
    if (out / "backbone.safetensors").is_file() and (out / "config.yaml").is_file():
        print(f"[compare] central SSL: reusing {out}", flush=True)
        return out, None
    print(f"[compare] central SSL: SimCLR on the union of the clients' images -> {out}")
    cfg.train.threads = os.cpu_count() or 1
    t = time.perf_counter()
    pretrain_centralized(cfg, cfg.federation.rounds, export=out / "backbone.safetensors")
    save_config(cfg, out / "config.yaml")
    return out, time.perf_counter() - t


def head_epochs(labeled: int, batch: int, steps: int) -> int:
    """Epochs that give about ``steps`` optimisation steps over ``labeled`` images."""
    return max(1, math.ceil(steps / max(1, math.ceil(labeled / batch))))


def head_jobs(args, n_clients: int) -> int:
    """Heads trained side by side: ``--jobs``, or one per client up to the CPU count."""
    if args.jobs > 0:
        return args.jobs
    return max(1, min(n_clients, os.cpu_count() or 1))


def run_heads(args, fed: Path, central: Path | None) -> list[dict]:
    """Every (label setting, method, client) head; the clients' heads of one method train side
    by side in worker processes (``--jobs``), each with its share of the CPU threads and, on a
    GPU machine, a GPU: job ``i`` gets GPU ``i mod (GPUs)``, so several jobs share one GPU."""
    import copy
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from fedssl.data.client_images import client_task
    from fedssl.methods.finetune import finetune_config, labeled_indices, timed_finetune

    sources = {"none": "none", "pixels": "pixels", "federated": str(fed), "central": str(central)}
    work = []  # (label setting, method, config, client index, run dir)
    for n in args.labels:
        for method in args.methods:
            source, extra = METHODS[method]
            if source == "central" and central is None:
                continue
            # data/model/seed always from the federated run, so every method sees one split
            base = [f"finetune.backbone={fed}", f"out_dir={args.out_dir}"]
            cfg, _ = finetune_config(
                FINETUNE_CONFIG,
                [*base, *extra, *args.finetune_set, f"finetune.labels_per_class={n}",
                 "tracking.wandb=disabled"],
            )  # fmt: skip
            cfg.finetune.backbone = sources[source]
            for pid, client in enumerate(cfg.data.clients):
                c = copy.deepcopy(cfg)
                labeled = len(labeled_indices(c, client_task(c.data, pid)))
                c.finetune.epochs = head_epochs(labeled, c.finetune.batch_size, args.steps)
                setting = "labeled25" if n == 0 else f"{n}perclass"
                slug = method.lower().replace(" ", "-").replace("(", "").replace(")", "")
                work.append((n, method, c, pid, Path(args.out_dir) / setting / slug /
                             f"client{pid}-{client}"))  # fmt: skip
    if not work:
        return []
    jobs = head_jobs(args, len(work[0][2].data.clients))
    if jobs > 1:  # the CPU shared out, not oversubscribed
        for _, _, c, _, _ in work:
            c.train.threads = max(1, (os.cpu_count() or 1) // jobs)
    print(f"[compare] {len(work)} heads, {jobs} at a time", flush=True)
    rows = []

    def report(n, method, r):
        r.update(method=method, labels_per_class=n)
        rows.append(r)
        setting = "labeled25" if n == 0 else f"{n}perclass"
        print(
            f"[compare] {setting} {method:22s} {r['client']:14s} labeled={r['labeled']:5d} "
            f"epochs={r['epochs']:4d} unlabeled_acc={r['unlabeled_acc']:.4f} "
            f"test_acc={r['test_acc']:.4f} ({r['wall_s']:.0f}s)",
            flush=True,
        )

    if jobs == 1:
        for n, method, c, pid, rd in work:
            report(n, method, timed_finetune(c, pid, rd))
        return rows
    # spawn: a forked child of a process that already ran torch threads can hang
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(timed_finetune, c, pid, rd, i % jobs)  # device index (mod GPUs)
            for i, (_, _, c, pid, rd) in enumerate(work)
        ]
        for (n, method, *_), fut in zip(work, futures, strict=True):
            report(n, method, fut.result())
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


#: where this run's tables start on the page
PAPER_HEADING = "## The paper (Flowers102 + Intel Image Classification, ResNet-50, 224 px)"


def render(res: dict) -> str:
    """The results page (markdown) from the saved results."""
    rows = res["rows"]
    clients = res["clients"]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = [
        "# Stage two: per-client task heads, FL+SSL against CL (paper 003, Table 2)",
        "",
        "Paper 003 trains a shared ResNet-50 by federated SimCLR on the clients' unlabeled 75%, "
        "then each client trains its own linear head on its labeled 25% and reports Acc@1 on "
        "its unlabeled 75%. CL is the same architecture trained supervised on the labeled 25% "
        "only. fedssl's protocol is the same, on the data available here; `unlabeled` is the "
        "paper's score, `test` the dataset's own test split (never seen in either stage).",
        "",
        *res.get("headline", []),
        f"Command: `{res['command']}` ({res['date']}; {res['machine']}). Stage one: "
        f"`{res['stage_one']['run']}` ({res['stage_one']['summary']}). Every head gets about "
        f"{res['steps']} optimisation steps (batch {res['batch_size']}). Wall time of the whole "
        f"comparison: {res['wall_s'] / 60:.1f} min"
        + (
            f" (stage one {res['stage_one']['seconds'] / 60:.1f} min of it)."
            if res["stage_one"].get("seconds")
            else " (stage one reused, not included)."
        ),
        "",
        PAPER_HEADING,
        "",
        "| method | flower102 | intel_scene | average |",
        "|---|---|---|---|",
        f"| CL | {PAPER['CL'][0]} | {PAPER['CL'][1]} | {sum(PAPER['CL']) / 2:.3f} |",
        f"| FL+SSL | {PAPER['FL+SSL'][0]} | {PAPER['FL+SSL'][1]} | "
        f"{sum(PAPER['FL+SSL']) / 2:.3f} |",
        f"| gain | | | **+{PAPER['average_gain']}** |",
        "",
    ]
    if sorted(clients) != sorted(PAPER["clients"]):
        lines += [
            "The paper-data row is **not yet measured**: Flowers102 and Intel Image "
            "Classification are not on this machine (no internet), and no GPU was available "
            "to this run. `python launch/compare.py --pretrain-config configs/pretrain/paper.yaml` "
            "runs it where the data is.",
            "",
        ]
    for n in res["labels"]:
        sub = [r for r in rows if r["labels_per_class"] == n]
        title = (
            "the paper's setting: every image of the labeled 25%"
            if n == 0
            else f"label-scarce: {n} labeled images per class"
        )
        labeled = {r["client"]: r["labeled"] for r in sub}
        lines += [
            f"## Offline pair, {title}",
            "",
            "Labeled images per client: "
            + ", ".join(f"{c} {labeled.get(c, '-')}" for c in clients)
            + ". Acc@1 (%), unlabeled / test.",
            "",
            "| method | " + " | ".join(clients) + " | average (unlabeled) | average (test) |",
            "|---|" + "---|" * (len(clients) + 2),
        ]
        avg = {}
        for m in methods:
            cells, unl, tst = [], [], []
            for c in clients:
                r = next((r for r in sub if r["method"] == m and r["client"] == c), None)
                if r is None:
                    cells.append("-")
                    continue
                cells.append(f"{_pct(r['unlabeled_acc'])} / {_pct(r['test_acc'])}")
                unl.append(r["unlabeled_acc"])
                tst.append(r["test_acc"])
            if len(unl) == len(clients):
                avg[m] = (sum(unl) / len(unl), sum(tst) / len(tst))
                tail = f"{_pct(avg[m][0])} | {_pct(avg[m][1])}"
            else:
                tail = "- | -"
            marker = next((r["marker"] for r in sub if r["method"] == m and "marker" in r), "")
            lines.append(f"| {m}{marker} | " + " | ".join(cells) + f" | {tail} |")
        if "CL" in avg:
            for m in (
                "raw pixels (linear)",
                "FL+SSL (linear)",
                "FL+SSL (partial)",
                "FL+SSL (full)",
            ):
                if m in avg:
                    du, dt = (100 * (avg[m][i] - avg["CL"][i]) for i in range(2))
                    lines.append(f"| gain of {m} over CL | | | {du:+.2f} | {dt:+.2f} |")
        lines.append("")
    if res.get("headline"):  # the page opens with it: this run's tables become one section
        start = lines.index(next(x for x in lines if x.startswith("Command: ")))
        lines = [*lines[:start], f"## Table 2 on the offline pair ({res['date']}; stage one: "
                 f"{res['stage_one']['summary']})", "",
                 *("#" + x if x.startswith("## ") else x for x in lines[start:])]  # fmt: skip
    lines += res.get("notes", [])
    return "\n".join(lines) + "\n"


def print_configs(args) -> int:
    """``--print-config``: the stage-one config, then the heads' (one method's overrides apply
    on top of it per head: see METHODS)."""
    from fedssl.cli import print_config

    try:
        cfg, run = stage_one_config(args)
        print(f"# stage one ({run})")
        print_config(cfg)
        head = load_config(FINETUNE_CONFIG, [*args.finetune_set, "tracking.wandb=disabled"])
        print("---\n# every head (plus its method's overrides; data/model/seed from stage one)")
        print_config({k: v for k, v in to_dict(head).items() if k in ("finetune", "runtime")},
                     runtime_of=head)  # fmt: skip
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args: Options, command: str) -> Path:
    """The whole comparison: stage one (reused, resumed or run), the centralized reference,
    every head; writes ``args.results`` (markdown) and its ``.json``. Returns the page's path.

    Raises:
        ConfigError: bad options, or a run of another recipe under the stage-one name.
        FederationFailed: stage one could not go on.
    """
    t0 = time.perf_counter()
    fed, fed_s = stage_one(args)
    if any(m.startswith("FL+SSL") for m in args.methods):
        check_backbones(fed)
    central, central_s = (None, None)
    if "central SSL (linear)" in args.methods:
        central, central_s = central_ssl(fed)
    rows = run_heads(args, fed, central)
    import torch

    from fedssl.runs import RunDir

    cfg = load_config(fed / "config.yaml")
    evals = [r["knn_acc_mean"] for r in RunDir(fed).metrics() if r.get("knn_acc_mean")]
    summary = (
        f"{cfg.model.backbone} {cfg.model.image_size} px, {cfg.federation.rounds} rounds, "
        f"{cfg.data.max_per_client or 'all'} images per client, final mean kNN accuracy "
        + (f"{evals[-1]:.4f}" if evals else "not logged")
    )
    results_md = Path(args.results)
    res = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": (
            torch.cuda.get_device_name(0)
            if torch.cuda.is_available()
            else f"{os.cpu_count()} CPUs, {platform.machine()}, no GPU"
        ),
        "stage_one": {"run": str(fed), "summary": summary, "seconds": fed_s},
        "central_ssl": {"run": str(central), "seconds": central_s},
        "clients": cfg.data.clients,
        "labels": args.labels,
        "steps": args.steps,
        "batch_size": load_config(FINETUNE_CONFIG).finetune.batch_size,
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }
    old = results_md.with_suffix(".json")
    if old.is_file():  # the page's hand-written parts: its opening and its reading of the numbers
        kept = json.loads(old.read_text())
        res.update({k: kept[k] for k in ("headline", "notes") if k in kept})
    results_md.parent.mkdir(parents=True, exist_ok=True)
    from fedssl.runs import write_text_atomic

    write_text_atomic(old, json.dumps(res, indent=1) + "\n")
    write_text_atomic(results_md, render(res))
    print(f"[compare] wrote {results_md} ({res['wall_s'] / 60:.1f} min)")
    return results_md
