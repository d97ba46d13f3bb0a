"""benchmarks/ssl_frontier.py: crossing times, a tiny run end to end, notes kept on rerender."""

import json
import shlex

import pytest


@pytest.fixture(scope="module")
def frontier(load_benchmark):
    return load_benchmark("ssl_frontier")


def test_crossing_is_the_first_round_at_or_above_the_line(frontier):
    rows = [
        {"s": 60.0, "knn": [0.70, 0.91]},
        {"s": 150.0, "knn": [0.78, 0.88]},
        {"s": 240.0, "knn": [0.76, 0.95]},
    ]
    assert frontier.crossing(rows, 0, 0.773) == pytest.approx(2.5)
    assert frontier.crossing(rows, 1, 0.906) == pytest.approx(1.0)
    assert frontier.crossing(rows, 1, 0.96) is None


@pytest.mark.parametrize(
    "bad",
    [
        ["--budget-s", "0"],
        ["--central", "-1"],
        ["--entries", "x"],
        ["--baseline-epochs", "0"],
        ["--max-rounds", "-1"],
        ["--render-only", "--baselines-only"],
    ],
)
def test_bad_arguments_exit_2(frontier, bad, tmp_path):
    with pytest.raises(SystemExit) as err:
        frontier.main([*bad, "--out", str(tmp_path / "p.md")])
    assert err.value.code == 2
    assert not list(tmp_path.iterdir())


def test_tiny_run_writes_the_page_and_keeps_its_notes(frontier, tiny_pretrain, tmp_path):
    tiny = [
        o
        for o in tiny_pretrain(str(tmp_path / "runs"), "x")
        if not o.startswith(("name=", "out_dir=", "model.backbone="))
    ]
    out = tmp_path / "results" / "frontier.md"
    common = ["--budget-s", "0.01", "--entries", "simclr", "byol+fedema"]
    common += ["--backbone", "test_resnet", "--out", str(out), "--baseline-epochs", "1"]
    argv = [*common, "--central", "1", "--set", *tiny]
    assert frontier.main(argv) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert set(res["entries"]) == {"simclr", "byol+fedema"}
    for e in res["entries"].values():  # a round that starts within the budget completes
        assert [r["round"] for r in e["rows"]] == [1] and e["backbone"] == "test_resnet"
    assert res["entries"]["byol+fedema"]["client_update"] == "fedema"
    assert sum("central" in e for e in res["entries"].values()) == 1
    assert len(res["pixels"]) == 2 and res["command"].endswith(shlex.join(argv))
    page = out.read_text()
    assert "(frontier.png)" in page and out.with_suffix(".png").is_file()
    assert "| simclr | test_resnet |" in page and "| byol+fedema | test_resnet |" in page
    assert "Federated vs centralized" in page
    # the baselines beside raw-pixel kNN: linear on pixels, CL and random init per backbone
    b = res["baselines"]
    assert b["epochs"] == 1 and len(b["pixels_linear"]) == 2
    assert set(b["supervised"]) == set(b["init_knn"]) == {"test_resnet"}
    assert "| linear head on raw pixels |" in page
    assert "| test_resnet from random init, supervised (CL) |" in page
    assert not list((tmp_path / "runs").glob("*"))  # the runs lived in a temporary folder
    # the hand-written reading of the numbers survives --render-only and a new run
    res["notes"] = ["## What this shows", "", "- a note"]
    res["title"] = "A page of its own"
    out.with_suffix(".json").write_text(json.dumps(res))
    res["load_at_end"] = [9.0, 9.0, 9.0]  # the measuring run's, kept on a re-render
    out.with_suffix(".json").write_text(json.dumps(res))
    assert frontier.main(["--render-only", "--out", str(out)]) == 0
    assert out.read_text().endswith("- a note\n") and "[9.0, 9.0, 9.0] at end" in out.read_text()
    assert frontier.main([*common, "--central", "0", "--set", *tiny]) == 0
    page = out.read_text()
    assert page.endswith("- a note\n") and "Federated vs centralized" not in page
    assert page.startswith("# A page of its own\n")
    # a page measured before the baselines existed gets them from its own command
    res = json.loads(out.with_suffix(".json").read_text())
    del res["baselines"]
    out.with_suffix(".json").write_text(json.dumps(res))
    assert "supervised (CL)" not in frontier.render(res)
    only = ["--baselines-only", "--baseline-epochs", "2", "--out", str(out)]
    assert frontier.main(only) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["baselines"]["epochs"] == 2 and set(res["baselines"]["supervised"]) == {
        "test_resnet"
    }
    page = out.read_text()
    assert "Measured by `python benchmarks/ssl_frontier.py --baselines-only" in page
    assert "supervised (CL)" in page and page.endswith("- a note\n")


def test_max_rounds_ends_each_entry_at_equal_rounds(frontier, tiny_pretrain, tmp_path):
    """On a loaded machine a budget buys fewer rounds; --max-rounds compares entries at equal
    rounds instead (the rounds are seeded, so the numbers do not depend on the load)."""
    # no --backbone: the entries take the config's (here test_resnet, set by the overrides)
    tiny = [
        o
        for o in tiny_pretrain(str(tmp_path / "runs"), "x")
        if not o.startswith(("name=", "out_dir="))
    ]
    out = tmp_path / "f.md"
    argv = ["--budget-s", "1e6", "--max-rounds", "2", "--entries", "simclr", "--central", "1"]
    argv += ["--baseline-epochs", "1", "--out", str(out)]
    assert frontier.main([*argv, "--set", *tiny]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    e = res["entries"]["simclr"]
    assert [r["round"] for r in e["rows"]] == [1, 2] and res["max_rounds"] == 2
    assert e["backbone"] == res["backbone"] == "test_resnet"
    # centralized gets the federated entry's training time, not the (huge) budget
    assert e["central"][-1]["s"] < e["rows"][-1]["s"] + 60
    assert "for 2 rounds (or" in out.read_text()


def test_default_backbone_is_the_configs_whichever_entry_comes_first(frontier, tmp_path):
    """The page records the backbone of the entries that do not name one: ``--backbone``, else
    the config's (with ``--set``) — not the backbone of the first entry, which may fix its own
    (``simclr-resnet18``)."""
    from fedssl.config import load_config

    out = ["--out", str(tmp_path / "p.md")]
    a = frontier.parse_args(["--entries", "simclr-resnet18", "simclr", *out])
    assert frontier.default_backbone(a) == load_config(a.config).model.backbone != "resnet18"
    assert frontier.entry_config(a, "simclr-resnet18", str(tmp_path)).model.backbone == "resnet18"
    a = frontier.parse_args(["--entries", "simclr-resnet18", *out, "--set", "model.backbone=x"])
    assert frontier.default_backbone(a) == "x"
    a = frontier.parse_args(["--backbone", "sresnet18_w16", *out])
    assert frontier.default_backbone(a) == "sresnet18_w16"
    assert frontier.entry_config(a, "simclr", str(tmp_path)).model.backbone == "sresnet18_w16"


def test_the_machine_line_names_the_cpu_model(frontier, tmp_path):
    # machines of the same kind differ several-fold in speed: a page's minutes need the CPU
    import harness

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC 9654\n")
    assert harness.cpu_model(str(info)) == "AMD EPYC 9654"
    (tmp_path / "empty").write_text("processor\t: 0\n")
    assert harness.cpu_model(str(tmp_path / "empty")) == harness.platform.processor()
    model = harness.cpu_model()
    assert (f"({model})" in harness.machine()) == bool(model)
