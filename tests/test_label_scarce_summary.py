"""benchmarks/label_scarce_summary.py on hand-written launch/compare.py results whose gains are
worked out here."""

import json

import pytest


@pytest.fixture(scope="module")
def summary(load_benchmark):
    return load_benchmark("label_scarce_summary")


def write(path, table):
    """``table``: {(labels, method): (fmnist unlabeled, fmnist test, mnist unlabeled, mnist test)}
    in %."""
    rows = []
    for (labels, method), accs in table.items():
        for i, client in enumerate(("fashion_mnist", "mnist")):
            rows.append(
                {
                    "labels_per_class": labels,
                    "method": method,
                    "client": client,
                    "unlabeled_acc": accs[2 * i] / 100,
                    "test_acc": accs[2 * i + 1] / 100,
                }
            )
    path.write_text(json.dumps({"clients": ["fashion_mnist", "mnist"], "rows": rows}))
    return path


LIN = "FL+SSL (linear)"


@pytest.fixture
def two_runs(tmp_path):
    a = write(
        tmp_path / "s0.json",
        {
            (5, "CL"): (60, 60, 80, 80),
            (5, LIN): (72, 71, 90, 91),  # gains +12/+11, +10/+11: mean +11 / +11
            (20, "CL"): (70, 70, 90, 90),
            (20, LIN): (71, 70, 91, 89),  # test: mnist -1
            (0, "CL"): (80, 80, 95, 95),
            (0, LIN): (79, 79, 95, 95),  # every label: below CL, not checked by --upto
        },
    )
    b = write(
        tmp_path / "s1.json",
        {
            (5, "CL"): (60, 60, 80, 80),
            (5, LIN): (66, 67, 88, 87),  # +6/+7, +8/+7: mean +7 / +7
            (20, "CL"): (70, 70, 90, 90),
            (20, LIN): (70, 71, 92, 92),  # level on fashion_mnist's unlabeled: >= holds
            (0, "CL"): (80, 80, 95, 95),
            (0, LIN): (80, 80, 95, 95),
        },
    )
    return a, b


def test_gains_checks_and_target(summary, two_runs, capsys):
    assert summary.main([str(p) for p in two_runs]) == 0
    out = capsys.readouterr().out
    assert "| 5 | +12.00 / +11.00, +6.00 / +7.00 | +10.00 / +11.00, +8.00 / +7.00 |" in out
    assert "| +9.00 / +9.00 | +6.00 | +7.00 |" in out  # mean of +11 and +7; lowest
    assert "| all |" in out.split("| 20 |")[1]  # every label comes last
    assert "up to 20 per class (5, 20), unlabeled: **2 of 2 runs**" in out
    assert "up to 20 per class (5, 20), test: **1 of 2 runs** (not: s0)" in out
    assert "**+9.00 / +9.00** (target +10: unlabeled not met, test not met)" in out
    assert "per run +11.00, +7.00 (unlabeled)" in out
    # another target and budget limit: 8 points at 5 per class is met; up to 5 both hold
    assert summary.main([str(p) for p in two_runs] + ["--target", "5=8", "--upto", "5"]) == 0
    out = capsys.readouterr().out
    assert "(target +8: unlabeled met, test met)" in out
    assert "up to 5 per class (5), test: **2 of 2 runs**" in out


@pytest.mark.parametrize(
    "extra, message",
    [(["--target", "five=10"], "--target takes LABELS=POINTS"), (["--upto", "0"], "--upto takes")],
)
def test_bad_arguments_exit_2_with_the_reason(summary, two_runs, capsys, extra, message):
    with pytest.raises(SystemExit) as err:
        summary.main([str(two_runs[0]), *extra])
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_a_method_the_files_lack_is_refused_with_those_they_have(summary, two_runs, capsys):
    assert summary.main([str(two_runs[0]), "--method", "FL+SSL (full)"]) == 2
    assert "has no rows for 'FL+SSL (full)'; it has CL, FL+SSL (linear)" in capsys.readouterr().err


def test_a_file_that_is_not_a_comparison_is_refused(summary, tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert summary.main([str(bad)]) == 2
    assert "not a launch/compare.py JSON" in capsys.readouterr().err
