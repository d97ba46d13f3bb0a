"""Stage one end to end in Flower's simulation engine on tiny data: SimCLR rounds, the kNN
monitor reported by every client, the exported backbone, what travels, and resume."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedssl.config import load_config
from fedssl.data.client_images import client_task
from fedssl.experiments.pretrain import (
    cache_line,
    data_path_line,
    summary,
    time_breakdown,
    time_line,
)
from fedssl.federation import pretraining
from fedssl.federation.records import SHARED_KEYS
from fedssl.federation.simulation import simulate
from fedssl.federation.supervised import weights_fingerprint
from fedssl.methods.monitor import MonitorSettings, pixels_knn
from fedssl.models.backbones import load_backbone
from fedssl.runs import RunDir

TRAVELLING_PREFIXES = SHARED_KEYS["pretrain"]

ROOT_CONFIG = "configs/pretrain/default.yaml"


@pytest.fixture
def cfg(tiny_pretrain, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    return load_config(
        ROOT_CONFIG,
        [*tiny_pretrain(tmp_path, "pt"), "tracking.wandb=offline"],
    )


def test_local_train_sends_only_the_shared_keys_and_rejects_other_backbones(cfg):
    state = pretraining.initial_state(cfg)
    assert state and all(k.startswith(TRAVELLING_PREFIXES) for k in state)
    new, metrics = pretraining.local_train(cfg, 1, state, 1)
    assert set(new) == set(state)
    unlabeled = client_task(cfg.data, 1).unlabeled
    assert metrics["num-examples"] == len(unlabeled) and metrics["steps"] == 3
    assert abs(len(unlabeled) - 180) <= 5  # 75% of 240 (stratified rounding per class)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert not all(torch.equal(new[k], state[k]) for k in state)
    cfg.model.backbone = "resnet18"
    with pytest.raises(ValueError, match="do not fit the configured simclr on backbone 'resnet18'"):
        pretraining.local_train(cfg, 0, state, 1)


def test_pretrain_rounds_knn_backbone_and_resume(cfg, monkeypatch):
    """Stage one with BYOL and FedEMA: kNN monitor and baselines, report, plot, exported
    backbone; the server receives the online network and predictor, never the target; each
    client keeps its target, last online network and lambda (calibrated once, on its first
    round) in its state file, which the resumed run uses."""
    import json

    from safetensors import safe_open

    import fedssl.federation.server_app as server_app
    from fedssl.aggregation import client as C

    cfg.ssl.method, cfg.ssl.client_update, cfg.ssl.temperature = "byol", "fedema", None
    cfg.model.pred_hidden = 32

    plotted = []
    real_plot = server_app.plot_curves

    def spy(series, path, **kw):
        plotted.append((series, kw))
        return real_plot(series, path, **kw)

    monkeypatch.setattr(server_app, "plot_curves", spy)
    simulate(cfg)
    rd = RunDir(cfg.run_dir())
    rows = rd.metrics()
    assert [r["round"] for r in rows] == [1]
    r1 = rows[0]
    for c in ("c0", "c1"):
        assert 0.0 <= r1[f"knn_acc_{c}"] <= 1.0
        assert 0.0 <= r1[f"knn_init_{c}"] <= 1.0
        assert -1.0 <= r1[f"train_loss_{c}"] <= 1.0  # BYOL: a negative cosine similarity
    # the raw-pixel baseline, once per run, on the monitor's own bank and queries
    for pid in (0, 1):
        assert r1[f"knn_pixels_c{pid}"] == pytest.approx(pixels_knn(MonitorSettings.of(cfg), pid))
    report = summary(cfg)
    assert "raw pixels" in report[0] and len(report) == 3
    for pid, line in enumerate(report[1:]):
        final, pixels = r1[f"knn_acc_c{pid}"], r1[f"knn_pixels_c{pid}"]
        assert f"raw pixels {pixels:.4f}: {final - pixels:+.4f}" in line
        assert line.index("raw pixels") < line.index("random init")
    assert r1["knn_acc_mean"] == pytest.approx((r1["knn_acc_c0"] + r1["knn_acc_c1"]) / 2)
    ckpt1 = load_file(str(rd.path / rd.state()["checkpoint"]))
    received = json.loads((rd.path / "received-keys.json").read_text())
    assert received["parts"] == ["backbone", "prediction_head", "projection_head"]
    assert sorted(ckpt1) == received["keys"]  # what was merged is what was received
    state_file = pretraining.client_state_file(cfg, 0)
    saved1 = load_file(str(state_file))
    with safe_open(str(state_file), framework="pt") as f:
        meta1 = f.metadata()
    assert any(k.startswith("backbone_momentum.") for k in saved1)  # the target stays here
    lam = float(meta1["fedema_lambda"])
    assert lam > 0 and meta1["round"] == "1"
    # round 2, by hand on client 0: the online network it trains from is the FedEMA formula
    module = pretraining.build_ssl(cfg)
    pretraining.load_shared(module, ckpt1, cfg)
    update = pretraining._client_update(cfg, module, ckpt1, saved1, meta1)
    online = [k for k in ckpt1 if k.startswith(("backbone.", "projection_head."))]
    mu = min(lam * C.divergence(saved1, ckpt1, online), 1.0)
    assert update["mu"] == pytest.approx(mu)
    k = "backbone.conv1.0.weight"
    assert torch.allclose(module.state_dict()[k], mu * saved1[k] + (1 - mu) * ckpt1[k], atol=1e-6)
    assert r1["bytes_up"] == 2 * sum(t.numel() * t.element_size() for t in ckpt1.values())
    net, meta = load_backbone(rd.path / "backbone.safetensors")
    assert meta["backbone"] == "test_resnet" and meta["round"] == "1"
    assert torch.equal(net.state_dict()["conv1.0.weight"], ckpt1["backbone.conv1.0.weight"])
    assert (rd.path / "accuracy.png").stat().st_size > 1000
    # the plot: client curves named by dataset, each with its raw-pixel level in its colour
    series, kw = plotted[-1]
    assert "knn acc fashion_mnist (c0)" in series and "knn acc fashion_mnist (c1)" in series
    assert kw["levels"] == {
        f"raw pixels, fashion_mnist (c{i})": (
            r1[f"knn_pixels_c{i}"],
            f"knn acc fashion_mnist (c{i})",
        )
        for i in (0, 1)
    }
    assert list((rd.path / "wandb").glob("offline-run-*/run-*.wandb"))

    cfg.federation.rounds = 2
    simulate(cfg, resume=True)
    rows = rd.metrics()
    assert [r["round"] for r in rows] == [1, 2]
    assert rd.state()["round"] == 2
    expected = weights_fingerprint(ckpt1)
    assert rows[1]["received_fingerprint_c0"] == pytest.approx(expected, rel=1e-9)
    assert rows[1]["received_fingerprint_c1"] == pytest.approx(expected, rel=1e-9)
    assert rows[1].get("knn_init_c0") is None  # the random-init baseline is round 1's only
    assert rows[1]["mu_c0"] == pytest.approx(mu, rel=1e-5)  # resumed from the saved state
    with safe_open(str(state_file), framework="pt") as f:
        meta2 = f.metadata()
    assert meta2["round"] == "2" and float(meta2["fedema_lambda"]) == lam  # calibrated once
    for r in rows:  # each round's breakdown adds up to its wall time
        for c in (0, 1):
            parts = r[f"data_s_c{c}"] + r[f"train_s_c{c}"] + r[f"other_s_c{c}"]
            assert parts == pytest.approx(r[f"work_s_c{c}"], rel=1e-6)
            assert 0 < r[f"train_s_c{c}"] < r[f"work_s_c{c}"] and r[f"eval_s_c{c}"] > 0
        b = time_breakdown([r], 2)
        parts = sum(b[k] for k in ("steps", "data", "other", "eval", "engine", "server"))
        assert parts == pytest.approx(r["round_s"], rel=0.02)
        assert 0 <= b["engine"] < r["round_s"] and b["steps"] > 0
    assert "time per round" in time_line(time_breakdown(rows, 2))


def test_paper_config_runs_one_step_on_fixture_data(tiny_flowers, tiny_intel, tmp_path):
    """configs/pretrain/paper.yaml as shipped (ResNet-50, 224 px, Flowers102 + Intel), pointed at
    tiny files in the real on-disk formats: one local SimCLR step per client on the CPU."""
    cfg = load_config(
        "configs/pretrain/paper.yaml",
        [
            f"data.roots.flower102={tiny_flowers}",
            f"data.roots.intel_scene={tiny_intel}",
            "train.batch_size=4",
            "train.local_steps=1",
            "runtime.workers=0",
            "runtime.accelerator=cpu",  # paper.yaml asks for a GPU
            "runtime.precision=32-true",
            "train.threads=2",
        ],
    )
    assert cfg.model.backbone == "resnet50" and cfg.model.image_size == 224
    state = pretraining.initial_state(cfg)
    assert sum(v.numel() for k, v in state.items() if k.startswith("backbone.")) > 23_000_000
    for pid, n_unlabeled in ((0, 12), (1, 18)):  # 15 flowers / 24 intel images, 25% labeled
        new, metrics = pretraining.local_train(cfg, pid, state, 1)
        assert metrics["num-examples"] == n_unlabeled and metrics["steps"] == 1
        assert torch.isfinite(torch.tensor(metrics["train_loss"]))
        assert set(new) == set(state)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_round_gives_the_same_weights_whatever_ran_before_it(tiny_pretrain, tmp_path, workers):
    """Augmentations used to draw from the process's global RNG, so a Ray actor that had run
    other work trained a round differently (two runs of one config differed)."""
    cfg = load_config(
        "configs/pretrain/default.yaml",
        [*tiny_pretrain(tmp_path, "det"), f"runtime.workers={workers}", "train.local_steps=2"],
    )
    start = pretraining.initial_state(cfg)
    first, _ = pretraining.local_train(cfg, 1, start, 2)
    torch.rand(1000)  # other work in the same process moves the global RNG on
    np.random.rand(10)
    again, _ = pretraining.local_train(cfg, 1, start, 2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    other, _ = pretraining.local_train(cfg, 1, start, 3)  # another round: other draws
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_a_round_on_the_image_cache_trains_as_the_loader_path(tiny_pretrain, tmp_path):
    """Batched views from the cache (``data.cache: auto``) and from per-image loaders
    (``off``) draw the same batches and views with the same seed: the same loss and weights."""
    from fedssl.data import cache

    got = {}
    for mode in ("off", "auto", "host"):
        cache.clear()
        cfg = load_config(
            "configs/pretrain/default.yaml",
            [*tiny_pretrain(tmp_path, f"c-{mode}"), "ssl.views=batched", f"data.cache={mode}",
             "train.local_steps=4", "train.batch_size=64"],
        )  # fmt: skip
        start = pretraining.initial_state(cfg)
        got[mode] = pretraining.local_train(cfg, 1, start, 2)
    (w_off, m_off), (w_auto, m_auto), (w_host, _) = got["off"], got["auto"], got["host"]
    assert m_auto["steps"] == m_off["steps"] == 4
    assert m_auto["num-examples"] == m_off["num-examples"]
    assert m_auto["train_loss"] == pytest.approx(m_off["train_loss"], rel=1e-5)
    assert all(torch.allclose(w_auto[k], w_off[k], atol=1e-5) for k in w_off)
    assert all(torch.equal(w_auto[k], w_host[k]) for k in w_off)  # one memory on a CPU
    # the metrics say where the images were: host memory on a CPU, 1 x 28 x 28 bytes each
    assert "cache_mib" not in m_off
    assert m_auto["cache_on_device"] == 0.0
    assert m_auto["cache_mib"] == pytest.approx(m_auto["num-examples"] * 28 * 28 / 2**20)
    rows = [{"round": 2, "cache_mib_c1": m_auto["cache_mib"], "cache_on_device_c1": 0.0}]
    assert cache_line(rows, 2) == (
        f"[fedssl] image cache: client 1 {m_auto['cache_mib']:.1f} MiB in host memory"
    )
    assert cache_line([{"round": 2, "train_s_c0": 1.0}], 2) == ""  # no cache, no line


def test_the_data_path_line_says_where_views_are_made_and_images_kept(tiny_pretrain, tmp_path):
    def line(*sets):
        return data_path_line(load_config(ROOT_CONFIG, [*tiny_pretrain(tmp_path, "d"), *sets]))

    assert line() == (  # the default on a CPU: auto resolves to batched views, host memory
        "[fedssl] data path: batched views (ssl.views=auto); each client's images decoded "
        "once per process, kept in host memory (the training device is the CPU)"
    )
    assert "loaded per batch by a DataLoader (lightly's views need PIL images)" in line(
        "ssl.views=lightly"
    )
    assert line("ssl.method=dino").startswith("[fedssl] data path: lightly views (ssl.views=auto)")
    assert line("data.cache=off").endswith("(data.cache=off)")
    gpu = SimpleNamespace(device=torch.device("cuda", 0))  # what auto says on a GPU machine
    cfg = load_config(ROOT_CONFIG, tiny_pretrain(tmp_path, "g"))
    assert data_path_line(cfg, gpu).endswith(
        "kept in cuda:0 where a client's images fit data.cache_gpu_share=0.5 of its free "
        "memory, else pinned host memory"
    )
    cfg.data.cache = "host"
    assert data_path_line(cfg, gpu).endswith("pinned host memory (data.cache=host)")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_two_runs_of_one_config_give_bit_identical_backbones(tiny_pretrain, tmp_path, workers):
    """Two 2-round federated stage ones of one config, same machine, same bits
    (before: not, with either worker setting). About a minute: `pytest -m slow`."""
    backbones = []
    for name in ("a", "b"):
        cfg = load_config(
            "configs/pretrain/default.yaml",
            [*tiny_pretrain(tmp_path, name), f"runtime.workers={workers}",
             "federation.rounds=2"],
        )  # fmt: skip
        simulate(cfg)
        backbones.append(load_file(str(cfg.run_dir() / "backbone.safetensors")))
    a, b = backbones
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_pixels_knn_takes_the_better_pixel_scaling(cfg, monkeypatch):
    """Raw pixels are scored in [0, 1] and normalised, with the same bank and queries, and the
    better of the two is the baseline (a scaling choice must not weaken it)."""
    import fedssl.methods.monitor as mp

    calls, real = [], mp.knn_predictions

    def fake_knn(bank, bank_y, queries, num_classes, k, t):
        calls.append((bank, bank_y, queries, k, t))
        pred = real(bank, bank_y, queries, num_classes, k, t)
        return (pred + 1) % num_classes if len(calls) % 2 == wrong else pred  # all wrong

    _, _, _, query_batches = mp.monitor_sets(mp.MonitorSettings.of(cfg), 0, 1)
    labels = torch.cat([y for _, y in query_batches])
    for wrong in (1, 0):  # the normalised pixels all wrong, then the [0, 1] ones
        calls.clear()
        monkeypatch.setattr(mp, "knn_predictions", fake_knn)
        got = mp.pixels_knn(mp.MonitorSettings.of(cfg), 0)
        monkeypatch.undo()
        (b_n, y_n, q_n, k, t), (b_01, y_01, q_01, _, _) = calls
        kept = (b_01, q_01) if wrong == 1 else (b_n, q_n)  # the scaling left right
        pred = real(kept[0], y_n, kept[1], 10, k, t)
        assert got == pytest.approx(float((pred == labels).double().mean())) and got > 0.3
    assert torch.equal(y_n, y_01)
    assert (k, t) == (cfg.ssl.knn_k, cfg.ssl.knn_t)
    assert b_n.shape == b_01.shape and b_n.shape[1] == cfg.model.image_size**2
    assert not torch.allclose(b_n, b_01)  # two different scalings
    task = client_task(cfg.data, 0)
    assert len(y_n) == min(cfg.ssl.knn_bank or len(task.labeled), len(task.labeled))


def test_the_monitor_scores_with_the_clients_own_batchnorm_statistics(cfg, monkeypatch):
    """``ssl.knn_bn: client`` (the default): the features the kNN monitor scores do not depend
    on the BatchNorm statistics the merged weights carry, only on the client's own training
    images (a random draw of ``knn_bn_images``, never its test split), and the module is left
    as it was; ``merged`` scores with the weights' own statistics."""
    import fedssl.methods.monitor as mp
    from fedssl.methods.pretrain import build_ssl, check_ssl

    assert cfg.ssl.knn_bn == "client"
    task = client_task(cfg.data, 1)
    cfg.ssl.knn_bn_images = 100
    own = mp.statistics_images(mp.MonitorSettings.of(cfg), 1, 1).dataset
    assert own.data is task.train and len(own) == 100
    assert set(own.indices) <= set(task.labeled) | set(task.unlabeled)
    cfg.ssl.knn_bn_images = 0
    assert len(mp.statistics_images(mp.MonitorSettings.of(cfg), 1, 1).dataset) == len(
        task.labeled
    ) + len(task.unlabeled)

    seen = []
    monkeypatch.setattr(  # a: bank labels, queries, classes, k, t
        mp, "knn_predictions", lambda bank, *a: seen.append(bank) or torch.zeros(len(a[1]))
    )
    torch.manual_seed(0)
    module = build_ssl(cfg)
    # the weights carry client 0's statistics (its images, brightened)
    images = [(x * 0.5 + 0.3, y) for x, y in mp.statistics_images(mp.MonitorSettings.of(cfg), 0, 1)]
    module.backbone = mp.with_own_statistics(module.backbone, images)
    norms = [m for m in module.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    for mode in ("client", "merged"):
        cfg.ssl.knn_bn = mode
        mp.backbone_knn(mp.MonitorSettings.of(cfg), 1, module)
        for m in norms:  # statistics shifted, as another merge would leave them
            m.running_mean.add_(0.1)
            m.running_var.mul_(2.0)
        before = norms[0].running_mean.clone()
        mp.backbone_knn(mp.MonitorSettings.of(cfg), 1, module)
        assert torch.equal(norms[0].running_mean, before)  # the module is not changed
    client_a, client_b, merged_a, merged_b = seen
    assert torch.allclose(client_a, client_b, atol=1e-5)
    assert merged_a.abs().sum() > 0 and not torch.allclose(merged_a, merged_b, atol=1e-3)
    assert not torch.allclose(client_a, merged_a, atol=1e-3)
    cfg.ssl.knn_bn_images = -1
    with pytest.raises(ValueError, match="knn_bn_images must be >= 0"):
        check_ssl(cfg)


@pytest.mark.parametrize("threshold, takes_global", [(1e9, True), (0.0, False)])
def test_fedu_takes_the_global_predictor_only_below_the_threshold(
    tiny_pretrain, tmp_path, threshold, takes_global
):
    cfg = load_config(
        ROOT_CONFIG,
        [
            *tiny_pretrain(tmp_path, "fedu"),
            "ssl.method=simsiam",
            "ssl.client_update=fedu",
            f"ssl.fedu_threshold={threshold}",
        ],
    )
    torch.manual_seed(1)
    received = pretraining.shared_state(pretraining.build_ssl(cfg), cfg)
    torch.manual_seed(2)
    saved = pretraining.build_ssl(cfg).state_dict()  # the client's own last networks
    module = pretraining.build_ssl(cfg)
    pretraining.load_shared(module, received, cfg)
    metrics = pretraining._client_update(cfg, module, received, saved, {})
    assert metrics["global_predictor"] == float(takes_global)
    sd, k = module.state_dict(), "prediction_head.layers.0.weight"
    assert torch.equal(sd[k], (received if takes_global else saved)[k])
    assert torch.equal(sd["backbone.conv1.0.weight"], received["backbone.conv1.0.weight"])


def test_local_layers_stay_on_each_client_and_the_monitor_scores_its_own_backbone(cfg, monkeypatch):
    """``ssl.local_layers``: the named backbone layers never reach the server, each client
    trains and keeps its own, and the kNN monitor scores the merged layers with the client's
    own; the exported (shared) backbone says what it lacks."""
    import json

    from fedssl.methods.pretrain import check_ssl
    from fedssl.methods.ssl_recipe import local_layer_keys

    cfg.ssl.local_layers, cfg.federation.rounds = ["layer4"], 2
    simulate(cfg)
    rd = RunDir(cfg.run_dir())
    module = pretraining.build_ssl(cfg)
    local = local_layer_keys(cfg, module)
    assert local and all(k.startswith("backbone.layer4.") for k in local)
    received = set(json.loads((rd.path / "received-keys.json").read_text())["keys"])
    backbone = {k for k in module.state_dict() if k.startswith("backbone.")}
    assert not received & local and backbone - local <= received
    own = [load_file(str(pretraining.client_state_file(cfg, pid))) for pid in (0, 1)]
    assert all(local <= set(s) for s in own)
    assert not all(torch.equal(own[0][k], own[1][k]) for k in local)  # each trained its own
    merged = load_file(str(rd.path / rd.state()["checkpoint"]))
    scored = []
    monkeypatch.setattr(
        pretraining, "backbone_knn", lambda c, pid, m: scored.append(m.state_dict()) or 0.5
    )
    pretraining.local_evaluate(cfg, 0, merged)
    assert all(torch.equal(scored[0][k], own[0][k]) for k in local)
    assert all(torch.equal(scored[0][k], merged[k]) for k in merged)
    # stage two: the shared file alone is no backbone; a client's head gets its own layers
    exported = rd.path / "backbone.safetensors"
    with pytest.raises(ValueError, match="stayed on each client.*name one of"):
        load_backbone(exported)
    with pytest.raises(ValueError, match="more than one of its clients"):
        load_backbone(exported, "fashion_mnist")  # both clients hold it: say which
    with pytest.raises(ValueError, match="name one of that run's clients"):
        load_backbone(exported, "mnist")  # not one of its clients
    with pytest.raises(ValueError, match="its client 2 is not 'fashion_mnist'"):
        load_backbone(exported, "fashion_mnist", 2)
    from fedssl.experiments.finetune import check_client
    from fedssl.methods.finetune import finetune_config

    ft, _ = finetune_config(
        "configs/finetune/default.yaml", [f"finetune.backbone={rd.path}", f"out_dir={rd.path}"]
    )
    head, _ = check_client(ft, "1")
    net = head.backbone.state_dict()
    assert all(torch.equal(net[k[len("backbone.") :]], own[1][k]) for k in local)
    assert all(torch.equal(net[k[len("backbone.") :]], merged[k]) for k in merged if k in backbone)
    cfg.ssl.local_layers = ["batchnorm"]  # FedBN: every BatchNorm layer, no convolution
    norms = local_layer_keys(cfg, module)
    assert {"backbone.bn1.weight", "backbone.bn1.running_var"} <= norms
    assert not any(k.endswith("conv1.weight") or k.endswith("conv2.weight") for k in norms)
    cfg.ssl.local_layers = ["layer9"]
    with pytest.raises(ValueError, match="has no module 'layer9'"):
        check_ssl(cfg)
    cfg.ssl.local_layers = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    with pytest.raises(ValueError, match="keep the whole backbone"):
        check_ssl(cfg)
