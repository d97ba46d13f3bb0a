"""launch/merge.py: bad input gets a clear error and exit code 2, before anything runs."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "launch" / "merge.py"


@pytest.fixture(scope="module")
def launch():
    spec = importlib.util.spec_from_file_location("launch_merge", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "train.lrr=0.1"], "unknown config key 'train.lrr'"),
        (["--method", "mean"], "unknown merge method 'mean'"),
        (["--config", "nope.yaml"], "does not exist"),
        (["--resume", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_bad_input_exits_2_with_message(launch, argv, message, capsys):
    assert launch.main(argv) == 2
    assert message in capsys.readouterr().err


def test_env_and_flags_become_overrides(launch):
    args = launch.parse_args(
        ["--env", "h", "--rounds", "3", "--local-steps", "50", "--wandb", "disabled"]
    )
    assert launch.overrides(args) == [
        "data.partition=label_split",
        "federation.rounds=3",
        "train.local_steps=50",
        "tracking.wandb=disabled",
    ]
