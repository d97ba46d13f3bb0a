"""benchmarks/rescore_knn.py: a saved run scored again gives the monitor's own numbers."""

import pytest
import torch

from fedssl.config import load_config
from fedssl.federation.simulation import simulate
from fedssl.runs import RunDir


@pytest.fixture(scope="module")
def rescore_knn(load_benchmark):
    return load_benchmark("rescore_knn")


def test_rescoring_a_run_reproduces_its_monitor(rescore_knn, tiny_pretrain, tmp_path, capsys):
    cfg = load_config("configs/pretrain/default.yaml", tiny_pretrain(tmp_path, "rs"))
    simulate(cfg)
    last = RunDir(cfg.run_dir()).metrics()[-1]
    r = rescore_knn.rescore(cfg.run_dir())
    assert r["round"] == "1" and r["clients"] == list(cfg.data.clients)
    # the run scored with each client's own statistics (the default), as the tool's column
    assert r["client"] == [last["knn_acc_c0"], last["knn_acc_c1"]]
    assert r["pixels"][0] == pytest.approx(RunDir(cfg.run_dir()).metrics()[0]["knn_pixels_c0"])
    assert rescore_knn.main([str(cfg.run_dir())]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert f"{r['merged'][1]:.3f} / {r['client'][1]:.3f} / {r['pixels'][1]:.3f} |" in row


def test_rescoring_a_run_whose_clients_kept_layers_scores_each_on_its_own(
    rescore_knn, tiny_pretrain, tmp_path, capsys
):
    """With ``ssl.local_layers`` the exported file is the shared part only: each client is
    scored on it completed with its own layers, which is what the run's monitor scored; the
    per-class accuracies add up to the overall one, for the backbone and for raw pixels."""
    over = [*tiny_pretrain(tmp_path, "loc"), "ssl.local_layers=[layer4]", "ssl.travel=[backbone]"]
    cfg = load_config("configs/pretrain/default.yaml", over)
    simulate(cfg)
    rows = RunDir(cfg.run_dir()).metrics()
    r = rescore_knn.rescore(cfg.run_dir())
    assert r["client"] == [rows[-1]["knn_acc_c0"], rows[-1]["knn_acc_c1"]]
    assert r["pixels"] == pytest.approx([rows[0]["knn_pixels_c0"], rows[0]["knn_pixels_c1"]])
    from fedssl.data.client_images import client_task
    from fedssl.methods.monitor import MonitorSettings, monitor_sets

    for pid in (0, 1):
        _, _, _, queries = monitor_sets(MonitorSettings.of(cfg), pid, 1)
        counts = torch.bincount(torch.cat([y for _, y in queries]), minlength=10).double()
        for overall, per_class in (
            (r["client"][pid], r["client_per_class"][pid]),
            (r["pixels"][pid], r["pixels_per_class"][pid]),
        ):
            cls = torch.tensor(per_class, dtype=torch.float64).nan_to_num(0.0)
            assert float((cls * counts).sum() / counts.sum()) == pytest.approx(overall)
    assert r["classes"][0] == list(client_task(cfg.data, 0).train.classes)
    assert rescore_knn.main([str(cfg.run_dir()), "--per-class"]) == 0
    out = capsys.readouterr().out
    assert f"| {r['classes'][1][0]} | {r['client_per_class'][1][0]:.2f} |" in out


def test_rescoring_refuses_a_directory_without_a_backbone(rescore_knn, tmp_path, capsys):
    assert rescore_knn.main([str(tmp_path)]) == 2
    assert "backbone.safetensors" in capsys.readouterr().err
