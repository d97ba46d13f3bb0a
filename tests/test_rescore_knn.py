"""benchmarks/rescore_knn.py: a saved run scored again gives the monitor's own numbers."""

import pytest

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


def test_rescoring_refuses_a_directory_without_a_backbone(rescore_knn, tmp_path, capsys):
    assert rescore_knn.main([str(tmp_path)]) == 2
    assert "backbone.safetensors" in capsys.readouterr().err
