"""What a federated experiment trains, chosen by ``cfg.experiment``.

The ClientApp and ServerApp are the same for every experiment; a :class:`Task` supplies the parts
that differ: the initial shared weights, a client's local training and (optional) local
evaluation, the server's (optional) evaluation of the merged weights, the partition manifest, the
columns and headline of the run log.

* ``supervised`` (papers 000/001, non-IID MLP; formerly ``merge``): supervised
  classification, merged model scored on the server's test set (``merged_acc``), clients report
  ``local_acc``.
* ``pretrain`` (paper 003, stage one): an SSL method (``ssl.method``, SimCLR by default) on each
  client's unlabeled images; every client
  scores the merged backbone by kNN on its own labeled/test data (``knn_acc``), so no data leaves
  a client, not even for evaluation.
* ``finetune`` (paper 003, stage two, ``--federated``): each client's task head stays on the
  client; only the trainable part of the backbone travels and is merged.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from flwr.app import RecordDict

from fedssl.config import ConfigError, ExperimentConfig

__all__ = ["Task", "SupervisedTask", "PretrainTask", "FinetuneTask", "get_task"]


class Task:
    """Interface of a federated experiment (see the module docstring)."""

    name = ""
    #: per-client train metrics kept in the run log as ``<name>_c<partition>``
    train_columns: tuple[str, ...] = ("train_loss", "train_s", "received_fingerprint")
    #: per-client evaluation metrics kept as ``<name>_c<partition>`` (and ``<name>_mean``)
    eval_columns: tuple[str, ...] = ()
    #: the number that sums up a round, for progress lines and plots
    headline = ""
    #: per-client columns printed each evaluated round (with their format) and plotted
    progress_columns: tuple[tuple[str, str], ...] = ()
    plot_columns: tuple[str, ...] = ()
    #: per-client baselines drawn as dashed levels beside the first plot column:
    #: ``(column, label)``, e.g. the raw-pixel kNN of stage one
    plot_levels: tuple[tuple[str, str], ...] = ()
    ylabel = "accuracy"

    def initial_state(self, cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def train(
        self,
        cfg: ExperimentConfig,
        pid: int,
        state: dict[str, torch.Tensor],
        rnd: int,
        store: RecordDict | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """One round on client ``pid``; ``store`` is the node's persistent Flower
        ``Context.state`` (what a client keeps between rounds and never sends)."""
        raise NotImplementedError

    def evaluate(
        self,
        cfg: ExperimentConfig,
        pid: int,
        state: dict[str, torch.Tensor],
        store: RecordDict | None = None,
    ) -> dict[str, float]:
        raise NotImplementedError(f"{self.name} has no client-side evaluation")

    def server_evaluate(
        self, cfg: ExperimentConfig, state: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Metrics of the merged weights computed on the server (none by default)."""
        return {}

    def manifest(self, cfg: ExperimentConfig) -> dict:
        raise NotImplementedError

    def on_checkpoint(self, cfg: ExperimentConfig, run_dir: Path, rnd: int, state) -> None:
        """Called after the merged weights of round ``rnd`` are saved (nothing by default)."""

    @property
    def federated_evaluation(self) -> bool:
        """Whether clients evaluate the merged weights each evaluation round."""
        return bool(self.eval_columns)


class SupervisedTask(Task):
    name = "supervised"
    train_columns = ("local_acc", "train_loss", "train_s", "work_s", "received_fingerprint")
    headline = "merged_acc"
    progress_columns = (("local_acc", ".4f"),)
    plot_columns = ("local_acc",)

    def initial_state(self, cfg):
        from fedssl.federation.supervised import initial_state

        return initial_state(cfg)

    def train(self, cfg, pid, state, rnd, store=None):
        from fedssl.federation.supervised import local_train

        return local_train(cfg, pid, state, rnd)

    def server_evaluate(self, cfg, state):
        from fedssl.federation.supervised import server_accuracy

        return {"merged_acc": server_accuracy(cfg, state)}

    def manifest(self, cfg):
        from fedssl.data.client_tensors import dataset_and_splits
        from fedssl.data.manifest import partition_manifest

        ds, splits = dataset_and_splits(cfg.data)
        parts = [{"train": s.train, "val": s.val, "test": s.test} for s in splits]
        meta = {
            "dataset": ds.name,
            "source": ds.source,
            "partition": cfg.data.partition,
            "seed": cfg.data.seed,
        }
        return partition_manifest(ds.labels, parts, ds.num_classes, meta=meta)


class PretrainTask(Task):
    name = "pretrain"
    train_columns = (
        "train_loss",
        "train_s",
        "data_s",
        "other_s",
        "work_s",
        "images_per_s",
        "cache_mib",
        "cache_on_device",
        "received_fingerprint",
        "knn_pixels",
        "knn_init",
        "divergence",
        "mu",
        "global_predictor",
    )
    eval_columns = ("knn_acc", "eval_s")
    headline = "knn_acc_mean"
    progress_columns = (("train_loss", ".3f"), ("knn_acc", ".4f"))
    plot_columns = ("knn_acc",)
    plot_levels = (("knn_pixels", "raw pixels"),)
    ylabel = "kNN accuracy"

    def initial_state(self, cfg):
        from fedssl.federation.pretraining import initial_state

        return initial_state(cfg)

    def train(self, cfg, pid, state, rnd, store=None):
        from fedssl.federation.pretraining import local_evaluate, local_train
        from fedssl.federation.supervised import weights_fingerprint

        start = time.perf_counter()
        received = weights_fingerprint(state)
        first = rnd == 1
        if first:  # the baselines, once per run: raw pixels (the one to beat) and random init
            from fedssl.methods.monitor import MonitorSettings, pixels_knn

            pixels = pixels_knn(MonitorSettings.of(cfg), pid)
            init = local_evaluate(cfg, pid, state)["knn_acc"]
        new, metrics = local_train(cfg, pid, state, rnd)
        metrics["received_fingerprint"] = received
        if first:
            metrics["knn_pixels"] = pixels
            metrics["knn_init"] = init
        # the whole message's work: round one's baselines count as time outside the steps
        work = time.perf_counter() - start
        metrics["other_s"] += max(0.0, work - metrics["work_s"])
        metrics["work_s"] = work
        return new, metrics

    def evaluate(self, cfg, pid, state, store=None):
        from fedssl.federation.pretraining import local_evaluate

        return local_evaluate(cfg, pid, state)

    def on_checkpoint(self, cfg, run_dir, rnd, state):
        """Keep ``<run>/backbone.safetensors`` (the latest merged backbone, with its architecture
        in the metadata) for stage two and for users."""
        from fedssl.methods.pretrain import backbone_meta
        from fedssl.models.backbones import export_backbone

        export_backbone(state, Path(run_dir) / "backbone.safetensors", backbone_meta(cfg, rnd))

    def manifest(self, cfg):
        """Which dataset each client holds and its labeled / unlabeled / test histograms.

        Computed from the config alone where the data is not on this machine (a deployed
        server never holds the clients' data): then only the dataset names are listed.
        """
        from fedssl.data.client_images import client_task
        from fedssl.data.datasets import DatasetNotFoundError

        clients = []
        for pid, name in enumerate(cfg.data.clients):
            entry: dict = {"partition-id": pid, "dataset": name}
            try:
                t = client_task(cfg.data, pid)
            except DatasetNotFoundError:
                entry["note"] = "data not on the server machine"
            else:
                entry.update(
                    {
                        "source": t.train.source,
                        "classes": t.num_classes,
                        "labeled": int(len(t.labeled)),
                        "unlabeled": int(len(t.unlabeled)),
                        "test": int(len(t.test)),
                        "labeled_histogram": t.histogram("labeled"),
                        "unlabeled_histogram": t.histogram("unlabeled"),
                    }
                )
            clients.append(entry)
        return {
            "setting": "one dataset per client",
            "labeled_fraction": cfg.data.labeled_fraction,
            "max_per_client": cfg.data.max_per_client,
            "seed": cfg.data.seed,
            "clients": clients,
        }


class FinetuneTask(Task):
    """Stage two, federated: every client trains its own head (kept in its ``Context.state``
    and saved under ``<run>/heads/``, never sent) and the trainable backbone part, which is
    merged by FedAvg each round."""

    name = "finetune"
    train_columns = ("train_loss", "train_s", "received_fingerprint")
    eval_columns = ("test_acc", "unlabeled_acc")
    headline = "test_acc_mean"
    progress_columns = (("train_loss", ".3f"), ("test_acc", ".4f"))
    plot_columns = ("test_acc",)

    def initial_state(self, cfg):
        from fedssl.federation.finetuning import federated_initial_state

        return federated_initial_state(cfg)

    def train(self, cfg, pid, state, rnd, store=None):
        from fedssl.federation.finetuning import federated_train
        from fedssl.federation.supervised import weights_fingerprint

        new, metrics = federated_train(cfg, pid, state, rnd, store)
        metrics["received_fingerprint"] = weights_fingerprint(state)
        return new, metrics

    def evaluate(self, cfg, pid, state, store=None):
        from fedssl.federation.finetuning import federated_evaluate

        return federated_evaluate(cfg, pid, state, store)

    def manifest(self, cfg):
        return PretrainTask().manifest(cfg)


_TASKS: dict[str, Task] = {
    "supervised": SupervisedTask(),
    "pretrain": PretrainTask(),
    "finetune": FinetuneTask(),
}


def get_task(cfg_or_name: ExperimentConfig | str) -> Task:
    """The task of an experiment config (or name)."""
    name = cfg_or_name if isinstance(cfg_or_name, str) else cfg_or_name.experiment
    if name not in _TASKS:
        raise ConfigError(f"experiment: unknown {name!r}; choose one of {', '.join(_TASKS)}")
    return _TASKS[name]
