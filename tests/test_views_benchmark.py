"""benchmarks/views.py: both ways of making views timed side by side on tiny data, one row per
client, the page with its ratios."""

import json

import pytest


@pytest.fixture(scope="module")
def views_bench(load_benchmark):
    return load_benchmark("views")


def test_views_benchmark_times_both_ways_per_client_and_writes_the_page(
    views_bench, tiny_pretrain, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "views.md"
    over = tiny_pretrain(tmp_path, "vb")
    assert views_bench.main(["--passes", "1", "--out", str(out), "--set", *over]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert set(res["views_ms_per_image"]) == {"lightly", "batched"}
    assert [r["client"] for r in res["rounds"]] == ["fashion_mnist", "fashion_mnist"]
    page = out.read_text()
    r = res["rounds"][0]
    ratio = r["batched_s"] / r["lightly_s"]
    assert f"| fashion_mnist | {r['lightly_s']:.2f} | {r['batched_s']:.2f} | {ratio:.2f}x |" in page
    assert "--passes 1" in res["command"] and res["machine"] in page
    with pytest.raises(SystemExit):
        views_bench.parse_args(["--passes", "0"])
