"""fedssl.runs: a run directory that holds a run is resumed, moved aside or refused, never
cleared; metrics rows are written atomically."""

import json

import pytest

from fedssl.runs import RunDir, RunExistsError, claim_run_dir, holds_run


def _earlier_run(path):
    rd = RunDir(path)
    rd.log_metrics({"round": 1, "acc": 0.5})
    rd.update_state(round=1, checkpoint="checkpoints/round_0001.safetensors")
    (path / "config.yaml").write_text("name: old\n")
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def test_an_earlier_run_is_refused_with_the_ways_out_and_left_as_it_was(tmp_path):
    run = tmp_path / "r"
    before = _earlier_run(run)
    assert holds_run(run)
    with pytest.raises(RunExistsError) as err:
        claim_run_dir(run)
    msg = str(err.value)
    assert "completed round 1" in msg and f"--resume {run}" in msg
    assert "--name" in msg and "--overwrite" in msg
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert claim_run_dir(run, resume=True) is None and holds_run(run)


def test_overwrite_moves_the_earlier_run_aside_and_keeps_it(tmp_path):
    run = tmp_path / "r"
    before = _earlier_run(run)
    aside = claim_run_dir(run, overwrite=True)
    assert not run.exists() and aside.name.startswith("r.replaced-")
    assert {p.name: p.read_bytes() for p in aside.iterdir() if p.is_file()} == before
    _earlier_run(run)  # and again, within the same second: a second, distinct name
    aside2 = claim_run_dir(run, overwrite=True)
    assert aside2 != aside and aside.is_dir() and aside2.is_dir()


def test_empty_or_config_only_folders_are_free(tmp_path):
    assert claim_run_dir(tmp_path / "missing") is None
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.yaml").write_text("name: x\n")
    assert not holds_run(tmp_path / "cfg") and claim_run_dir(tmp_path / "cfg") is None


def test_metrics_rows_are_rewritten_atomically(tmp_path):
    rd = RunDir(tmp_path / "m")
    for r in range(1, 4):
        rd.log_metrics({"round": r, "x": r * 0.5})
    assert [json.loads(line)["round"] for line in rd.metrics_jsonl.read_text().splitlines()] == [
        1,
        2,
        3,
    ]
    assert rd.metrics_csv.read_text().splitlines()[0] == "round,x"
    assert not list(rd.path.glob("*.tmp"))
