"""benchmarks/gpu.py: the GPU check's CPU dry run runs every step and writes its page."""

import json

import pytest
import torch


@pytest.fixture(scope="module")
def gpu_bench(load_benchmark):
    return load_benchmark("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_measures_nothing(gpu_bench, tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert gpu_bench.main(["--out", str(out)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not out.exists()


def test_cpu_dry_run_runs_every_step_and_writes_the_page(gpu_bench, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "results" / "gpu.md"
    argv = ["--device", "cpu", "--tiny", "--out", str(out), "--work-dir", str(tmp_path / "w")]
    assert gpu_bench.main(argv) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    page = out.read_text()
    assert res["dry_run"] and "Dry run on the CPU" in page and "--tiny" in page
    # 1. the three precisions, fedssl against the plain loop
    assert [r["variant"] for r in res["steps"]] == ["fp32", "bf16", "bf16 + channels-last"]
    for r in res["steps"]:
        assert r["fedssl_images_per_s"] > 0 and r["plain_images_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["fedssl_images_per_s"] / r["plain_images_per_s"])
    # 2. each client's input pipeline, from the generated JPEG folders, with both kinds of views
    assert [(p["client"], p["views"]) for p in res["pipeline"]] == [
        (c, v) for v in ("lightly", "batched") for c in ("flower102", "intel_scene")
    ]
    assert "| flower102 | batched |" in page
    assert all(p["images_per_s"] > 0 and 20 <= p["images"] <= 40 for p in res["pipeline"])
    assert (tmp_path / "w" / "flowers" / "flowers-102" / "setid.mat").is_file()
    assert (tmp_path / "w" / "intel" / "seg_test" / "seg_test" / "street").is_dir()
    # 3. three federated rounds of paper.yaml with both clients, and the estimate
    rounds = res["federated"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["round_s"] >= max(r["train_s"]) > 0 for r in rounds)
    assert rounds[-1]["knn_acc_mean"] is not None and rounds[0]["knn_acc_mean"] is None
    assert res["estimate"]["minutes_100_rounds"] > 0
    assert res["estimate"]["real_unlabeled"] == [1530, 10525]


def test_a_failing_section_keeps_the_sections_measured_before_it(gpu_bench, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")

    def engine_down(cfg):
        raise RuntimeError("the engine did not start")

    monkeypatch.setattr(gpu_bench, "federated_rounds", engine_down)
    out = tmp_path / "gpu.md"
    argv = ["--device", "cpu", "--tiny", "--out", str(out), "--work-dir", str(tmp_path / "w")]
    assert gpu_bench.main(argv) == 1
    res = json.loads(out.with_suffix(".json").read_text())
    page = out.read_text()
    error = "RuntimeError: the engine did not start"
    assert res["failed"] == {"section": "federated", "error": error}
    assert len(res["steps"]) == 3 and len(res["pipeline"]) == 4  # measured before it: kept
    assert "federated" not in res and "estimate" not in res
    assert "## Training step" in page and "## Input pipeline" in page
    assert f"Section `federated` failed: {error}" in page
    assert "## Federated rounds" not in page
