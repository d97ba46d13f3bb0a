"""The privacy results page (benchmarks/privacy.py) is rendered from its JSON: ratios against
the non-private run, ε as accounted, the published anchor beside ε = 8, and SecAgg+'s ratio."""

import pytest


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("privacy")


def _run(acc, eps=None, sets=""):
    privacy = {"dp_sgd": {"0": {"epsilon": eps}, "1": {"epsilon": eps}}} if eps else None
    budget = f"privacy.dp_sgd.epsilon={eps:g} " if eps else ""
    command = f"python launch/noniid.py --set {budget}{sets}" if budget or sets else "cmd"
    return {"fed_acc": acc, "fed_acc_last5": acc, "rounds": 20, "command": command,
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
    assert "at ε = 8 >= 0.95x non-private: met, 0.960x at best (the study's settings)" in page
    assert "both clients: met, 0.950x" in page


def test_a_tuned_private_run_is_shown_beside_its_non_private_twin(bench):
    res = {
        "machine": "2 CPUs", "date": "2026-12-07",
        "noniid": {
            "none": _run(0.9),
            "eps8": _run(0.8, 8),
            "none-momentum0.9": _run(0.95, sets="train.momentum=0.9"),
            "eps8-momentum0.9": _run(0.9, 8, sets="train.momentum=0.9"),
        },
        "central": {}, "heads": {}, "secagg": {},
    }  # fmt: skip
    page = bench.render(res)
    row = next(x for x in page.splitlines() if x.startswith("| 8 | train.momentum 0.9 |"))
    assert "| 90.00 | 90.00 | 1.000 | 0.947 |" in row
    assert (
        "met, 1.000x at best (`train.momentum 0.9`); 0.947x the non-private run with the same "
        "settings" in page
    )
