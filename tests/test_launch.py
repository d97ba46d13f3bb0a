"""launch/merge.py and launch/pretrain.py: bad input gets a clear error and exit code 2, before
anything runs."""

import pytest


@pytest.fixture(scope="module")
def launch(load_launch):
    return load_launch("merge")


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
        "federation.rounds=3",
        "train.local_steps=50",
        "tracking.wandb=disabled",
        "data.partition=label_split",
    ]


@pytest.fixture(scope="module")
def pretrain(load_launch):
    return load_launch("pretrain")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "ssl.temprature=0.1"], "unknown config key 'ssl.temprature'"),
        (["--config", "configs/merge/paper.yaml"], "launch/pretrain.py runs pretrain"),
        (["--set", "data.clients=[cifar]"], "unknown dataset 'cifar'"),
        (["--resume", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_pretrain_bad_input_exits_2_with_message(pretrain, argv, message, capsys):
    assert pretrain.main(argv) == 2
    assert message in capsys.readouterr().err


def test_pretrain_missing_data_says_where_and_how(pretrain, tmp_path, capsys):
    roots = [f"data.roots.flower102={tmp_path}/flowers", f"data.roots.intel_scene={tmp_path}/i"]
    argv = ["--config", "configs/pretrain/paper.yaml", "--set", *roots]
    assert pretrain.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/flowers" in err and "imagelabels.mat" in err
