"""Stage two as ``launch/finetune.py`` runs it: one client's head (with its W&B record and a
report), or every client's head at once on Flower (heads stay on their clients). The checks
(runtime, data, run directory) are the launcher's, done before these are called."""

from __future__ import annotations

import time

from fedssl.config import ConfigError, ExperimentConfig, to_dict
from fedssl.privacy import REPRODUCIBLE_WARNING

__all__ = ["check_client", "check_federated", "run_client", "run_federated"]


def check_client(cfg: ExperimentConfig, client: str) -> tuple:
    """Everything a one-client run needs, checked before anything is written: the runtime, the
    client's data, and a backbone that loads and fits the client's images. Returns the built
    ``(classifier, backbone metadata)``, for :func:`run_client` to train (the backbone file is
    read once).

    Raises:
        ConfigError, FileNotFoundError, ValueError (a backbone file of another architecture),
        DatasetNotFoundError.
    """
    from fedssl import runtime
    from fedssl.data.client_images import client_task
    from fedssl.methods import finetune as stage_two

    runtime.resolve(cfg)
    pid = stage_two.client_index(cfg, client)
    task = client_task(cfg.data, pid)
    path = stage_two.resolve_backbone(cfg.finetune.backbone, cfg.out_dir)
    module, meta = stage_two.build_classifier(cfg, task.num_classes, path, task.name, pid)
    stage_two.check_backbone_fits(task.name, meta, stage_two.image_side(task))
    return module, meta


def run_client(cfg: ExperimentConfig, client: str, built: tuple | None = None) -> dict:
    """Train and score ``client``'s head (:func:`fedssl.methods.finetune.finetune`; ``built``:
    what :func:`check_client` returned), log the results to the tracker and print them. Returns
    the results."""
    from fedssl.cli import runtime_line
    from fedssl.methods.finetune import finetune
    from fedssl.tracking import Tracker

    f = cfg.finetune
    scarce = f", {f.labels_per_class} labels per class" if f.labels_per_class else ""
    print(
        f"[fedssl] stage two: client {client}, mode {f.mode}, {f.epochs} epochs{scarce}; "
        f"run dir {cfg.run_dir()}",
        flush=True,
    )
    print(runtime_line(cfg, comment=False), flush=True)
    t = time.perf_counter()
    r = finetune(cfg, client, built=built)
    tracker = Tracker(
        cfg.tracking.wandb, cfg.tracking.project, cfg.name, cfg.run_dir(), to_dict(cfg)
    )
    tracker.log({k: v for k, v in r.items() if isinstance(v, int | float)}, step=0)
    tracker.finish()
    print(
        f"[fedssl] backbone {r['backbone']} from {r['backbone_source']}; head trained on "
        f"{r['labeled']} labeled images ({r['train_s']:.0f}s)"
    )
    print(
        f"[fedssl] {r['client']}: unlabeled_acc={r['unlabeled_acc']:.4f} "
        f"(its {r['unlabeled_n']} unlabeled images, paper 003's protocol)  "
        f"test_acc={r['test_acc']:.4f} (the dataset's {r['test_n']} test images)"
    )
    if "epsilon" in r:
        print(
            f"[fedssl] privacy: record-level ε={r['epsilon']:.3g} at δ={r['delta']:g} for the "
            f"{r['labeled']} labeled images (DP-SGD: σ={r['dp_noise']:.3g}, C="
            f"{cfg.privacy.dp_sgd.max_grad_norm:g}, {r['dp_steps']} steps at q={r['dp_rate']:.3g})"
        )
        if r.get("reproducible_noise"):
            print("[fedssl] WARNING: " + REPRODUCIBLE_WARNING.format("privacy.dp_sgd"))
    print(
        f"[fedssl] done in {time.perf_counter() - t:.0f}s; results: "
        f"{cfg.run_dir() / 'results.json'}, head: {cfg.run_dir() / 'head.safetensors'}"
    )
    return r


def check_federated(cfg: ExperimentConfig) -> dict:
    """Preflight's backend config for a federated fine-tuning of ``cfg``.

    Raises:
        ConfigError: it cannot run (fewer than two clients, resources this machine lacks).
    """
    from fedssl.federation.preflight import preflight

    if len(cfg.data.clients) < 2:
        raise ConfigError(f"--federated needs two or more data.clients, got {cfg.data.clients}")
    return preflight(cfg)


def run_federated(
    cfg: ExperimentConfig, verbose: bool = False, backend: dict | None = None
) -> list[dict]:
    """Every client's head at once on Flower (simulation); prints each client's last scores.
    Returns the run's metric rows. ``backend``: :func:`check_federated`'s, where the caller ran
    it and claimed the run directory.

    Raises:
        FederationFailed: the federation could not go on.
    """
    from fedssl.federation.simulation import simulate
    from fedssl.runs import RunDir

    f = cfg.federation
    print(
        f"[fedssl] stage two, federated: {', '.join(cfg.data.clients)}; mode "
        f"{cfg.finetune.mode}, {f.rounds} rounds of {cfg.finetune.local_epochs} epoch(s); heads "
        f"stay on their clients; run dir {cfg.run_dir()}",
        flush=True,
    )
    t = time.perf_counter()
    simulate(cfg, verbose=verbose, backend=backend)
    rows = RunDir(cfg.run_dir()).metrics()
    scored = [r for r in rows if r.get("test_acc_mean") is not None]
    if scored:
        last = scored[-1]
        for pid, name in enumerate(cfg.data.clients):
            print(
                f"[fedssl] client {pid} {name}: test_acc={last.get(f'test_acc_c{pid}', 0):.4f} "
                f"unlabeled_acc={last.get(f'unlabeled_acc_c{pid}', 0):.4f}"
            )
    print(f"[fedssl] done in {time.perf_counter() - t:.0f}s; heads: {cfg.run_dir() / 'heads'}")
    return rows
