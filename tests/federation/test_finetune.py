"""Stage two: a client's head on the stage-one backbone, alone and federated (heads stay home)."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedssl.config import ConfigError, load_config, save_config
from fedssl.data.client_images import client_task
from fedssl.experiments import table2
from fedssl.federation import finetuning as fed_ft
from fedssl.federation import pretraining
from fedssl.federation.records import from_record
from fedssl.federation.simulation import simulate
from fedssl.federation.strategy import MergeStrategy
from fedssl.methods import finetune as stage_two
from fedssl.methods.heads import load_head
from fedssl.models.backbones import export_backbone
from fedssl.runs import RunDir

FINETUNE_CONFIG = "configs/finetune/default.yaml"


@pytest.fixture
def stage_one(tiny_pretrain, tmp_path):
    """A stage-one run directory (config.yaml + backbone.safetensors) whose backbone had a few
    local SimCLR steps on the tiny data: ``runs/pt``."""
    cfg = load_config("configs/pretrain/default.yaml", tiny_pretrain(tmp_path / "runs", "pt"))
    cfg.train.local_steps = 6
    state, _ = pretraining.local_train(cfg, 0, pretraining.initial_state(cfg), 1)
    rd = cfg.run_dir()
    save_config(cfg, rd / "config.yaml")
    meta = {"backbone": "test_resnet", "in_chans": 1, "small_input": False, "image_size": 28}
    export_backbone(state, rd / "backbone.safetensors", meta)
    return rd


def _cfg(run_dir, *overrides):
    cfg, path = stage_two.finetune_config(
        FINETUNE_CONFIG,
        [f"out_dir={run_dir.parent}", "tracking.wandb=disabled", "train.threads=1", *overrides],
    )
    return cfg, path


def test_resolve_backbone(tmp_path, stage_one):
    with pytest.raises(FileNotFoundError, match="launch/pretrain.py"):
        stage_two.resolve_backbone("", tmp_path / "empty")
    (tmp_path / "runs" / "unfinished").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished stage-one run"):
        stage_two.resolve_backbone(str(tmp_path / "runs" / "unfinished"))
    assert stage_two.resolve_backbone("", tmp_path / "runs") == stage_one / "backbone.safetensors"
    # a newer backbone outside a federated run (no state.json) loses to a federated run's
    central = tmp_path / "runs" / "pt-central"
    central.mkdir()
    (central / "backbone.safetensors").write_bytes(
        (stage_one / "backbone.safetensors").read_bytes()
    )
    assert stage_two.resolve_backbone("", tmp_path / "runs") == central / "backbone.safetensors"
    (stage_one / "state.json").write_text("{}")
    assert stage_two.resolve_backbone("", tmp_path / "runs") == stage_one / "backbone.safetensors"
    assert stage_two.resolve_backbone(str(stage_one)) == stage_one / "backbone.safetensors"
    assert stage_two.resolve_backbone("none") is None


def test_config_takes_the_split_from_the_stage_one_run(stage_one):
    cfg, path = _cfg(stage_one)
    assert path == stage_one / "backbone.safetensors"
    assert cfg.experiment == "finetune"
    assert cfg.data.clients == ["fashion_mnist", "fashion_mnist"]
    assert cfg.data.max_per_client == 240 and cfg.model.backbone == "test_resnet"
    assert cfg.finetune.mode == "linear" and cfg.finetune.backbone_lr_scale == 0.1
    cfg, _ = _cfg(stage_one, "data.labeled_fraction=0.5", "finetune.mode=full")
    assert cfg.data.labeled_fraction == 0.5 and cfg.finetune.mode == "full"


def test_linear_head_on_the_stage_one_backbone(stage_one):
    cfg, _ = _cfg(stage_one, "finetune.epochs=20", "name=lin", "finetune.bn=client")
    frozen = load_file(str(stage_one / "backbone.safetensors"))
    r = stage_two.finetune(cfg, 1)
    task = client_task(cfg.data, 1)
    assert r["client"] == "fashion_mnist" and r["partition_id"] == 1 and r["num_classes"] == 10
    assert r["labeled"] == len(task.labeled) and r["unlabeled_n"] == len(task.unlabeled)
    assert r["test_n"] == 100
    # the tiny images' class is a bright block: a few SimCLR steps make it linearly separable
    assert r["unlabeled_acc"] > 0.6 and r["test_acc"] > 0.6
    rd = cfg.run_dir()
    assert json.loads((rd / "results.json").read_text())["test_acc"] == r["test_acc"]
    head = load_file(str(rd / "head.safetensors"))
    stats = {k for k in frozen if k.rsplit(".", 1)[-1] in ("running_mean", "running_var")}
    assert stats and set(head) == {
        "head.0.running_mean",
        "head.0.running_var",
        "head.0.num_batches_tracked",
        "head.1.weight",
        "head.1.bias",
        *(f"backbone.{k}" for k in stats),
        *(f"backbone.{k.rsplit('.', 1)[0]}.num_batches_tracked" for k in stats),
    }
    # the frozen backbone's weights came from the file, untouched; its BatchNorm statistics are
    # this client's own (finetune.bn=client), and the head file carries them
    assert r["backbone_bn"] == "client"
    module, meta = stage_two.build_classifier(cfg, 10, stage_one / "backbone.safetensors")
    assert all(torch.equal(module.backbone.state_dict()[k], v) for k, v in frozen.items())
    own = stage_two.with_own_statistics(
        module.backbone, stage_two.statistics_images(stage_two.MonitorSettings.of(cfg), 1, 1, 28)
    ).state_dict()
    for k in stats:
        assert torch.allclose(head[f"backbone.{k}"], own[k], rtol=1e-3, atol=1e-3)
        assert not torch.allclose(own[k], frozen[k], atol=1e-3)
    load_head(module, rd / "head.safetensors")
    assert stage_two.evaluate(module, cfg, task, meta)["test_acc"] == r["test_acc"]
    # finetune.bn: merged (the default) keeps the file's statistics
    cfg.finetune.bn, cfg.name = "merged", "lin-merged"
    assert stage_two.finetune(cfg, 1)["backbone_bn"] == "file"
    head = load_file(str(cfg.run_dir() / "head.safetensors"))
    assert all(torch.equal(head[f"backbone.{k}"], frozen[k]) for k in stats)
    other, _ = stage_two.build_classifier(cfg, 3, stage_one / "backbone.safetensors")
    with pytest.raises(ValueError, match="does not fit this classifier"):
        load_head(other, rd / "head.safetensors")


def test_label_scarce_subset(stage_one):
    cfg, _ = _cfg(stage_one, "finetune.labels_per_class=2")
    task = client_task(cfg.data, 0)
    idx = stage_two.labeled_indices(cfg, task)
    assert np.bincount(task.train.labels[idx], minlength=10).tolist() == [2] * 10
    assert set(idx) <= set(task.labeled)
    rarest = np.bincount(task.train.labels[task.labeled]).min()
    cfg.finetune.labels_per_class = 50
    with pytest.raises(ConfigError, match=f"only {rarest} images of its rarest class"):
        stage_two.labeled_indices(cfg, task)


def test_cl_baseline_trains_everything_from_random_weights(stage_one):
    cfg, path = _cfg(
        stage_one, "finetune.backbone=none", "finetune.mode=full", "finetune.epochs=40", "name=cl"
    )
    assert path is None and cfg.model.backbone == "test_resnet"
    r = stage_two.finetune(cfg, 0)
    assert r["backbone_source"] == "random init"
    assert r["test_acc"] > 0.5
    saved = load_file(str(cfg.run_dir() / "head.safetensors"))
    assert any(k.startswith("backbone.layer4.") for k in saved)


def test_federated_finetuning_never_sends_a_head(stage_one, monkeypatch):
    received: list[set[str]] = []
    original = MergeStrategy.aggregate_train

    def spy(self, server_round, replies):
        replies = list(replies)
        for m in replies:
            if m.has_content():
                received.append(
                    {k for rec in m.content.array_records.values() for k in from_record(rec)}
                )
        return original(self, server_round, replies)

    monkeypatch.setattr(MergeStrategy, "aggregate_train", spy)
    cfg, _ = _cfg(
        stage_one,
        "finetune.mode=partial",
        "federation.rounds=2",
        "finetune.local_epochs=2",
        "name=fed",
    )
    cfg.data.clients = ["fashion_mnist", "mnist"]
    cfg.data.roots = {"mnist": cfg.data.root}  # the tiny files stand in for MNIST too
    simulate(cfg)

    shared = set(fed_ft.federated_initial_state(cfg))
    assert shared and all(k.startswith("backbone.layer4.") for k in shared)
    assert len(received) == 4  # two clients x two rounds
    assert all(keys == shared for keys in received)
    assert not any(k.startswith("head.") for keys in received for k in keys)

    rows = RunDir(cfg.run_dir()).metrics()
    assert [r["round"] for r in rows] == [1, 2]
    for c in ("c0", "c1"):
        assert 0.0 <= rows[-1][f"test_acc_{c}"] <= 1.0
        assert 0.0 <= rows[-1][f"unlabeled_acc_{c}"] <= 1.0
    heads = sorted((cfg.run_dir() / "heads").glob("*.safetensors"))
    assert [h.name for h in heads] == [
        "client0-fashion_mnist.safetensors",
        "client1-mnist.safetensors",
    ]
    with safe_open(str(heads[0]), framework="pt") as f:
        assert f.metadata()["round"] == "2"  # the head kept training from round 1's
    h0, h1 = (load_file(str(h)) for h in heads)
    assert not torch.equal(h0["head.1.weight"], h1["head.1.weight"])


def test_federated_linear_mode_is_refused(stage_one):
    cfg, _ = _cfg(stage_one)
    with pytest.raises(ConfigError, match="needs finetune.mode partial or full"):
        fed_ft.federated_initial_state(cfg)


@pytest.fixture(scope="module")
def launch(load_launch):
    return load_launch("finetune")


def test_launch_flower102_on_fixture_data_and_without_it(launch, tiny_flowers, tmp_path, capsys):
    torch.manual_seed(0)
    from fedssl.methods.ssl.simclr import SimCLR

    rgb = SimCLR("test_resnet", in_chans=3)
    meta = {"backbone": "test_resnet", "in_chans": 3, "small_input": False, "image_size": 32}
    path = export_backbone(rgb.state_dict(), tmp_path / "rgb.safetensors", meta)
    common = ["--backbone", str(path), "--out-dir", str(tmp_path), "--wandb", "disabled"]
    argv = ["--client", "flower102", "--epochs", "2", *common]
    assert launch.main([*argv, "--set", f"data.roots.flower102={tiny_flowers}"]) == 0
    out = capsys.readouterr().out
    assert "unlabeled_acc=" in out and "test_acc=" in out
    r = json.loads((tmp_path / "finetune-flower102-linear" / "results.json").read_text())
    assert r["num_classes"] == 3 and r["test_n"] == 15

    assert launch.main([*argv, "--set", f"data.roots.flower102={tmp_path}/none"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/none" in err and "imagelabels.mat" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--client", "mnist", "--backbone", "/nope"], "no backbone file or run directory"),
        (["--client", "mnist", "--set", "finetune.mod=full"], "unknown config key"),
        (["--client", "cifar", "--backbone", "none"], "unknown dataset 'cifar'"),
        (
            ["--client", "mnist", "--backbone", "pixels", "--mode", "full"],
            "the raw-pixel baseline is finetune.mode=linear",
        ),
    ],
)
def test_launch_bad_input_exits_2(launch, argv, message, tmp_path, capsys):
    assert launch.main([*argv, "--out-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_compare_writes_the_table_with_the_papers_numbers(stage_one, tmp_path, load_launch):
    (stage_one / "state.json").write_text(json.dumps({"round": 1}))  # a finished 1-round run
    compare = load_launch("compare")
    md = tmp_path / "multitask.md"
    methods = ["CL", "raw pixels (linear)", "FL+SSL (linear)", "FL+SSL (full)"]
    argv = [
        *("--pretrain", str(stage_one), "--methods", *methods),
        *("--labels", "1,2", "all", "--steps", "4"),
        *("--out-dir", str(tmp_path / "cmp"), "--results", str(md)),
    ]
    assert compare.main(argv) == 0
    res = json.loads(md.with_suffix(".json").read_text())
    assert res["labels"] == [1, 2, 0]
    assert len(res["rows"]) == 4 * 2 * 3  # methods x clients x label settings
    scarce = [r for r in res["rows"] if r["labels_per_class"] == 2]
    assert {r["labeled"] for r in scarce} == {20}
    cl = [r for r in res["rows"] if r["method"] == "CL"]
    assert {r["backbone_source"] for r in cl} == {"random init"}
    pixels = [r for r in res["rows"] if r["method"] == "raw pixels (linear)"]
    assert {r["backbone_source"] for r in pixels} == {"raw pixels"} and len(pixels) == 6
    text = md.read_text()
    assert "| CL | 29.926 | 83.288 |" in text and "+14.488" in text
    assert "not yet measured" in text
    for m in methods:  # every method's row in each of the three tables (+ the paper's CL row)
        assert text.count(f"| {m} | ") == 3 + (m == "CL"), m
    assert text.count("| gain of FL+SSL (linear) over CL |") == 3
    assert text.count("| gain of raw pixels (linear) over CL |") == 3
    assert compare.main([*argv[:-6], "--labels", "1,lots", *argv[-4:]]) == 2


def test_compare_never_reuses_a_finished_run_of_another_recipe(
    stage_one, tmp_path, load_launch, capsys
):
    (stage_one / "state.json").write_text(json.dumps({"round": 1}))
    compare = load_launch("compare")
    same = [f"out_dir={stage_one.parent}", f"name={stage_one.name}", "federation.rounds=1"]
    base = ["--pretrain-config", str(stage_one / "config.yaml"), "--wandb", "disabled"]
    # the same config: the finished run is reused, nothing is trained
    opts = table2.Options(
        pretrain_config=str(stage_one / "config.yaml"), set=same, wandb="disabled"
    )
    assert table2.stage_one(opts) == (stage_one, None)
    # another recipe under the same name: refused, naming the difference and the ways out
    there = load_config(stage_one / "config.yaml").ssl.temperature
    argv = [*base, "--set", *same, "ssl.temperature=0.33", "--results", str(tmp_path / "m.md")]
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert f"ssl.temperature: {there!r} there, 0.33 asked" in err and "--set name=<new>" in err
    assert not (tmp_path / "m.md").exists()


def test_launch_refuses_a_backbone_file_that_does_not_fit_its_architecture(
    launch, tmp_path, capsys
):
    from fedssl.methods.ssl.simclr import SimCLR

    small = SimCLR("test_resnet", in_chans=1).state_dict()
    meta = {"backbone": "resnet18", "in_chans": 1, "small_input": False, "image_size": 28}
    path = export_backbone(small, tmp_path / "wrong.safetensors", meta)
    argv = ["--client", "mnist", "--backbone", str(path), "--out-dir", str(tmp_path)]
    assert launch.main([*argv, "--wandb", "disabled"]) == 2
    assert "does not fit 'resnet18'" in capsys.readouterr().err


def test_compare_resumes_an_interrupted_stage_one_instead_of_restarting_it(stage_one, monkeypatch):
    """A stage-one run asked for 3 rounds that stopped after round 1 is continued (resume),
    its metrics kept; before, compare started it again from round 0 and deleted them."""
    import fedssl.federation.simulation as sim

    cfg = load_config(stage_one / "config.yaml", ["federation.rounds=3"])
    save_config(cfg, stage_one / "config.yaml")
    rd = RunDir(stage_one)
    rd.log_metrics({"round": 1, "knn_acc_mean": 0.5})
    rd.save_checkpoint(1, pretraining.initial_state(cfg))
    before = rd.metrics_jsonl.read_bytes()
    calls = []
    monkeypatch.setattr(sim, "simulate", lambda c, resume=False, **k: calls.append((c, resume)))
    same = [f"out_dir={stage_one.parent}", f"name={stage_one.name}", "federation.rounds=3"]
    opts = table2.Options(
        pretrain_config=str(stage_one / "config.yaml"), set=same, wandb="disabled"
    )
    run, seconds = table2.stage_one(opts)
    assert run == stage_one and seconds is not None
    assert [(c.run_dir(), resume) for c, resume in calls] == [(stage_one, True)]
    assert rd.metrics_jsonl.read_bytes() == before


def test_federated_rerun_never_starts_from_the_earlier_runs_heads(
    stage_one, launch, monkeypatch, capsys
):
    import fedssl.federation.simulation as sim

    runs = stage_one.parent
    old = runs / "finetune-federated-partial"
    (old / "heads").mkdir(parents=True)
    (old / "heads" / "client0-fashion_mnist.safetensors").write_bytes(b"old head")
    (old / "state.json").write_text('{"round": 2}')
    calls = []
    monkeypatch.setattr(sim, "simulate", lambda c, **k: calls.append(c))
    argv = ["--federated", "--out-dir", str(runs), "--wandb", "disabled",
            "--set", "data.clients=[fashion_mnist,fashion_mnist]"]  # fmt: skip
    assert launch.main(argv) == 2  # refused: resume or --overwrite
    assert "already holds a run that completed round 2" in capsys.readouterr().err
    assert not calls and (old / "heads" / "client0-fashion_mnist.safetensors").is_file()
    assert launch.main([*argv, "--overwrite"]) == 0 and len(calls) == 1
    assert not (old / "heads").exists()  # the new run starts with no heads
    (kept,) = runs.glob("finetune-federated-partial.replaced-*")
    assert (kept / "heads" / "client0-fashion_mnist.safetensors").read_bytes() == b"old head"


def test_one_cl_baseline_random_init_learns_at_the_heads_rate(stage_one):
    """launch/finetune.py --backbone none --mode full used to inherit backbone_lr_scale 0.1
    while launch/compare.py's CL used 1.0: two different baselines under one name."""
    cfg, path = _cfg(stage_one, "finetune.backbone=none", "finetune.mode=full")
    assert path is None and cfg.finetune.backbone_lr_scale == 0.1  # the config's default
    module, _ = stage_two.build_classifier(cfg, 10, path)
    module.anneal = False  # the optimizer alone (its schedule needs a Trainer)
    assert {g["lr"] for g in module.configure_optimizers().param_groups} == {cfg.finetune.lr}
    pre, _ = _cfg(stage_one, "finetune.mode=full")  # a pretrained backbone keeps the scale
    module, _ = stage_two.build_classifier(pre, 10, stage_one / "backbone.safetensors")
    module.anneal = False
    lrs = sorted(g["lr"] for g in module.configure_optimizers().param_groups)
    assert lrs == pytest.approx([0.1 * pre.finetune.lr, pre.finetune.lr])


@pytest.mark.parametrize(
    "schedule, expected",
    [("exp", [0.1, 0.05, 0.025]), ("cosine", [0.1, 0.075, 0.025])],  # 3 rounds, lr 0.1
)
def test_federated_finetuning_follows_the_configured_schedule(
    stage_one, monkeypatch, schedule, expected
):
    """It used to anneal by cosine whatever train.lr_schedule said."""
    cfg, _ = _cfg(
        stage_one, "finetune.mode=partial", "finetune.lr=0.1", "federation.rounds=3",
        f"train.lr_schedule={schedule}", "train.lr_decay=0.5", "name=sched",
    )  # fmt: skip
    seen = []

    def fake_fit(module, cfg, task, meta, epochs, seed=0, rt=None):
        seen.append(module.lr)
        return {"labeled": 1, "train_loss": 0.0, "train_s": 0.0}

    monkeypatch.setattr(fed_ft, "fit", fake_fit)
    state = fed_ft.federated_initial_state(cfg)
    for rnd in (1, 2, 3):
        fed_ft.federated_train(cfg, 0, state, rnd)
    assert seen == pytest.approx(expected)


def test_a_backbone_that_cannot_see_the_clients_images_is_refused(
    stage_one, tiny_flowers, launch, tmp_path, capsys
):
    """After the default stage one (28 px, one channel), a head for Flowers102 used to train on
    28 px grey thumbnails without a word."""
    cfg, path = _cfg(stage_one, f"data.roots.flower102={tiny_flowers}")
    with pytest.raises(ConfigError, match="takes 1-channel images; flower102's have 3"):
        stage_two.finetune(cfg, "flower102", tmp_path / "head")
    assert not (tmp_path / "head").exists()
    meta = {"backbone": "resnet18", "source": "x", "in_chans": 3, "image_size": 28}
    with pytest.raises(ConfigError, match="shrunk 17x.*model.image_size=224 model.in_chans=3"):
        stage_two.check_backbone_fits("flower102", meta, side=500)  # the real images
    stage_two.check_backbone_fits("flower102", meta, side=100)  # shrunk 3.6x: allowed
    stage_two.check_backbone_fits("mnist", {**meta, "image_size": 224}, side=28)  # upscaled
    argv = ["--client", "flower102", "--backbone", str(stage_one), "--out-dir", str(tmp_path),
            "--wandb", "disabled", "--set", f"data.roots.flower102={tiny_flowers}"]  # fmt: skip
    assert launch.main(argv) == 2
    assert "colour would be dropped" in capsys.readouterr().err


def _labeled_features(module, cfg, task, meta):
    """The module's current backbone features of the labeled images (eval transform)."""
    from fedssl import runtime
    from fedssl.data.client_images import ImageDataset
    from fedssl.data.transforms import eval_transform

    tf = eval_transform(int(meta["image_size"]), int(meta["in_chans"]))
    ds = ImageDataset(task.train, stage_two.labeled_indices(cfg, task), tf, "L")
    x, _ = runtime.predict(module.backbone, runtime.loader(runtime.resolve(cfg), ds, 64))
    return x.double()


@pytest.mark.parametrize("mode", ["full", "partial"])
def test_head_statistics_are_those_of_the_final_backbone(stage_one, mode):
    """The head's BatchNorm(momentum=None) used to average over every batch of the fit, i.e.
    over the backbones of every step (and augmented views), not the backbone it is scored with."""
    cfg, path = _cfg(stage_one, f"finetune.mode={mode}", "finetune.epochs=3", "finetune.lr=0.5")
    task = client_task(cfg.data, 0)
    module, meta = stage_two.build_classifier(cfg, task.num_classes, path)
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    stage_two.fit(module, cfg, task, meta, cfg.finetune.epochs)
    moved = [k for k, v in module.backbone.state_dict().items() if not torch.equal(before[k], v)]
    assert moved  # the backbone trained, so the running average describes other weights
    x = _labeled_features(module, cfg, task, meta)
    bn = module.head[0]
    torch.testing.assert_close(bn.running_mean.double(), x.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), x.var(0), rtol=1e-4, atol=1e-5)


def test_federated_evaluation_scores_the_merged_backbone_with_its_statistics(stage_one):
    cfg, _ = _cfg(stage_one, "finetune.mode=partial", "federation.rounds=1", "name=fbn")
    state = fed_ft.federated_initial_state(cfg)
    fed_ft.federated_train(cfg, 0, state, 1)  # trains the head on its local backbone
    merged = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
              for k, v in state.items()}  # fmt: skip
    seen = {}
    real = fed_ft.evaluate

    def spy(module, cfg, task, meta, rt=None):
        seen["mean"] = module.head[0].running_mean.clone().double()
        seen["x"] = _labeled_features(module, cfg, task, meta)
        return real(module, cfg, task, meta, rt)

    fed_ft.evaluate = spy
    try:
        fed_ft.federated_evaluate(cfg, 0, merged)
    finally:
        fed_ft.evaluate = real
    torch.testing.assert_close(seen["mean"], seen["x"].mean(0), rtol=1e-4, atol=1e-5)


def test_calibrate_head_refuses_features_of_another_width(stage_one):
    cfg, path = _cfg(stage_one)
    module, _ = stage_two.build_classifier(cfg, 10, path)
    with pytest.raises(ValueError, match="expected"):
        module.calibrate_head(torch.zeros(4, module.backbone.num_features + 1))


def test_monitor_baselines_learn_the_bank_labels_and_score_the_monitor_queries(
    tiny_pretrain, tmp_path
):
    """The supervised references of the stage-one monitor (and of the SSL frontier's pages):
    trained on the bank's labels, for the epochs asked, scored on the monitor's queries."""
    cfg = load_config("configs/pretrain/default.yaml", tiny_pretrain(str(tmp_path), "mb"))
    short = stage_two.monitor_baselines(cfg, 0, epochs=1)
    full = stage_two.monitor_baselines(cfg, 0, epochs=30)
    assert set(full) == {"pixels_linear", "supervised"}
    # the tiny images are learnable: with their labels both heads get (almost) every query
    assert full["pixels_linear"] >= 0.9 and full["supervised"] >= 0.9
    # one epoch from random init is far from it: the epochs asked for are the epochs trained
    assert short["supervised"] <= full["supervised"] - 0.3
    # 60 queries (ssl.knn_queries): every score is a whole number of them
    for acc in (*short.values(), *full.values()):
        assert acc * 60 == pytest.approx(round(acc * 60))
    cfg.finetune.labels_per_class = 5
    with pytest.raises(ConfigError, match="labels_per_class"):
        stage_two.monitor_baselines(cfg, 0)


def test_a_private_head_standardises_with_the_unlabeled_images_only(stage_one):
    from fedssl import runtime
    from fedssl.data.client_images import ImageDataset
    from fedssl.data.transforms import eval_transform, pil_mode

    cfg, path = _cfg(stage_one, "finetune.epochs=3", "privacy.dp_sgd.epsilon=8")
    res = stage_two.finetune(cfg, 0, run_dir=stage_one.parent / "head")
    assert 7.5 <= res["epsilon"] <= 8.0 and res["delta"] == 1e-5
    assert res["dp_steps"] == 3 * round(1 / res["dp_rate"])
    head = load_file(str(stage_one.parent / "head" / "head.safetensors"))
    # the standardisation holds the statistics of the unlabeled images' features, not of the
    # labeled ones DP-SGD protects (those would be released without noise)
    task = client_task(cfg.data, 0)
    module, meta = stage_two.build_classifier(cfg, task.num_classes, path, task.name, 0)

    def mean_feature(idx):
        ds = ImageDataset(task.train, idx, eval_transform(28, 1), pil_mode(1))
        return runtime.predict(module.backbone, runtime.loader(None, ds, 100), None)[0].mean(0)

    unlabeled = mean_feature(task.unlabeled)
    assert torch.allclose(head["head.0.running_mean"], unlabeled, atol=1e-5)
    assert not torch.allclose(head["head.0.running_mean"], mean_feature(task.labeled), atol=1e-5)
    plain = stage_two.finetune(_cfg(stage_one, "finetune.epochs=3")[0], 0, stage_one.parent / "h2")
    assert "epsilon" not in plain


def test_privacy_settings_are_checked_against_the_stage_one_runs_clients(stage_one):
    run = load_config(stage_one / "config.yaml")
    run.data.clients = ["fashion_mnist"] * 3
    save_config(run, stage_one / "config.yaml")
    secagg = ["privacy.secagg.enabled=true", "federation.weighted=false"]
    cfg, _ = _cfg(stage_one, *secagg, "federation.min_clients=3")
    assert cfg.privacy.secagg.enabled and len(cfg.data.clients) == 3


def test_without_a_stage_one_run_the_default_clients_and_every_override_hold(tmp_path):
    cfg, path = stage_two.finetune_config(
        FINETUNE_CONFIG,
        ["finetune.backbone=pixels", f"out_dir={tmp_path}", "privacy.dp_sgd.epsilon=8"],
    )
    default = load_config("configs/pretrain/default.yaml")
    assert path is None and cfg.data.clients == default.data.clients
    assert cfg.privacy.dp_sgd.epsilon == 8.0  # a private head stays private
