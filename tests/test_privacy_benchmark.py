"""The privacy results page (benchmarks/privacy.py) is rendered from its JSON: ratios against
the non-private run, ε as accounted, the published anchor beside ε = 8, and SecAgg+'s ratio."""

import pytest


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("privacy")


def _run(acc, eps=None):
    privacy = {"dp_sgd": {"0": {"epsilon": eps}, "1": {"epsilon": eps}}} if eps else None
    return {"fed_acc": acc, "fed_acc_last5": acc, "rounds": 20, "command": "cmd",
            "privacy": privacy}  # fmt: skip


def test_the_page_shows_each_run_beside_the_non_private_one(bench):
    res = {
        "machine": "2 CPUs", "date": "2026-12-07", "command": "python benchmarks/privacy.py",
        "noniid": {"none": _run(0.9), "eps8": _run(0.864, 7.98)},
        "central": {},
        "heads": {
            "mnist-stage-one-l0-none": {"test_acc": 0.95, "command": "c"},
            "mnist-stage-one-l0-eps8": {"test_acc": 0.9025, "command": "c"},
        },
        "secagg": {"non-IID study, 10 clients": {
            "plain_s": 2.0, "secagg_s": 2.5, "ratio": 1.25, "max_diff_round1": 3e-6,
            "bound": 3.8e-6, "command": "c", "command_plain": "p"}},
    }  # fmt: skip
    page = bench.render(res)
    row = next(line for line in page.splitlines() if line.startswith("| 8 |"))
    assert "| 86.40 |" in row and "| 0.960 |" in row and "| 7.98 |" in row and "| 97.0 |" in row
    head = next(line for line in page.splitlines() if line.startswith("| mnist | 25 %"))
    assert "| 95.00 |" in head and "| 90.25 |" in head and head.endswith("| 0.950 |")
    assert "| 2.00 | 2.50 | 1.25 |" in page
    assert "at ε = 8 >= 0.95x non-private: met, 0.960x at best (eps8)" in page
    assert "both clients: met, 0.950x" in page
