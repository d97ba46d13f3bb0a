"""Config loading: YAML + dotted overrides, and errors that name the key."""

import pytest

from fedssl.config import ConfigError, ExperimentConfig, load_config, save_config


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ntrain:\n  lr: 0.1\n")
    cfg = load_config(p, ["train.lr=0.02", "federation.rounds=7", "model.batchnorm=true"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == "x" and cfg.train.lr == 0.02 and cfg.federation.rounds == 7
    assert cfg.model.batchnorm is True and cfg.train.batch_size == 64


def test_round_trip(tmp_path):
    cfg = load_config(None, {"data.partition": "label_split", "data.root": "/d"})
    save_config(cfg, tmp_path / "r.yaml")
    assert load_config(tmp_path / "r.yaml") == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "unknown config key 'train.lrr'; allowed: train.optimizer"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.lr=fast", "train.lr: expected a number"),
        ("federation.rounds=2.5", "federation.rounds: expected an integer"),
        ("data.partition=random", "data.partition: 'random' is not allowed; choose one of iid"),
        ("tracking.wandb=maybe", "tracking.wandb"),
        ("model.batchnorm=perhaps", "model.batchnorm: expected true/false"),
        ("train=3", "train: expected a mapping"),
        ("noequals", "must look like key.sub=value"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(None, [override])


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_round_lr_schedules():
    from fedssl.config import round_lr

    cfg = load_config(None, ["train.lr=0.1", "train.lr_decay=0.5", "federation.rounds=4"])
    assert [round_lr(cfg, r) for r in (1, 2, 3)] == pytest.approx([0.1, 0.05, 0.025])
    cfg.train.lr_schedule = "cosine"
    assert [round_lr(cfg, r) for r in (1, 3)] == pytest.approx([0.1, 0.05])
    assert round_lr(cfg, 4) < round_lr(cfg, 3)


def test_config_diff_lists_changed_leaves_and_skips_ignored_ones():
    from fedssl.config import config_diff

    a = load_config("configs/pretrain/default.yaml")
    b = load_config(
        "configs/pretrain/default.yaml", ["ssl.temperature=0.33", "tracking.wandb=disabled"]
    )
    assert config_diff(a, a) == []
    assert config_diff(a, b, ignore=("tracking",)) == [("ssl.temperature", a.ssl.temperature, 0.33)]
    assert ("tracking.wandb", a.tracking.wandb, "disabled") in config_diff(a, b)


def test_experiment_merge_is_a_deprecated_name_for_supervised(tmp_path):
    """``experiment: merge`` (supervised federated training) clashed with aggregation.merge,
    launch/merge.py and the hub's Merge; configs saved by earlier runs still load, with a
    warning that names the new kind."""
    old = tmp_path / "old.yaml"
    old.write_text("experiment: merge\nfederation:\n  rounds: 2\n")
    with pytest.warns(FutureWarning, match="'merge' is deprecated.*'supervised'"):
        cfg = load_config(old)
    assert cfg.experiment == "supervised" and cfg.federation.rounds == 2
    assert ExperimentConfig().experiment == "supervised"
    from fedssl.federation.kinds import get_task

    assert get_task(cfg).name == "supervised"
    with pytest.raises(ConfigError, match="choose one of supervised, pretrain, finetune"):
        load_config(old, ["experiment=merged"])


def test_personal_recipe_is_the_default_with_its_documented_overrides():
    """configs/pretrain/personal.yaml is the run docs/results/stage-one.md measured: the default
    plus the overrides its command line names, nothing else (so the file and the page cannot drift
    apart, nor the file from the default it says it builds on)."""
    from fedssl.config import to_dict

    personal = load_config("configs/pretrain/personal.yaml")
    measured = load_config(
        "configs/pretrain/default.yaml",
        [
            "name=pretrain-personal",
            "federation.rounds=100",
            "ssl.views=batched",
            "ssl.client_views.mnist.elastic_prob=0.5",
            "ssl.local_layers=[layer4]",
            "ssl.travel=[backbone]",
        ],
    )
    assert to_dict(personal) == to_dict(measured)
    assert personal.ssl.local_layers == ["layer4"]


def test_a_base_file_is_set_on_top_of_key_by_key(tmp_path):
    """``base: FILE`` (relative to the file's folder, not the working directory) takes that file
    and sets this one's values on top as --set would: siblings of a changed key stay, a list or
    an empty mapping replaces, bases may have bases."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text(
        "name: root\ntrain:\n  lr: 0.1\n  batch_size: 32\n"
        "ssl:\n  local_layers: [layer3, layer4]\n"
        "  client_views:\n    mnist:\n      elastic_prob: 0.5\n"
    )
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\nname: mid\ntrain:\n  lr: 0.2\n")
    (tmp_path / "sub" / "leaf.yaml").write_text(
        "base: mid.yaml\nname: leaf\nssl:\n  local_layers: [layer4]\n  client_views: {}\n"
    )
    mid = load_config(tmp_path / "sub" / "mid.yaml")
    assert (mid.name, mid.train.lr, mid.train.batch_size) == ("mid", 0.2, 32)
    assert mid.ssl.client_views == {"mnist": {"elastic_prob": 0.5}}
    leaf = load_config(tmp_path / "sub" / "leaf.yaml", ["train.batch_size=8"])
    assert (leaf.name, leaf.train.lr, leaf.train.batch_size) == ("leaf", 0.2, 8)
    assert leaf.ssl.local_layers == ["layer4"] and leaf.ssl.client_views == {}
    # what a run saves is the resolved config: it loads alone, without its bases
    save_config(leaf, tmp_path / "run.yaml")
    (tmp_path / "root.yaml").unlink()
    assert load_config(tmp_path / "run.yaml") == leaf


@pytest.mark.parametrize(
    "text, message",
    [
        ("base: nowhere.yaml\n", "its base 'nowhere.yaml' does not exist"),
        ("base: [a.yaml]\n", "base must name a YAML config file"),
        ("base: c.yaml\n", r"its bases loop \(c.yaml -> c.yaml\)"),
        ("base: d.yaml\n", r"its bases loop \(c.yaml -> d.yaml -> c.yaml\)"),
    ],
)
def test_a_bad_base_is_refused_by_name(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.yaml")


def test_personal_vicreg_is_the_personal_recipe_with_vicregs_own_training():
    """configs/pretrain/personal-vicreg.yaml is the run docs/results/multitask.md measured:
    personal.yaml plus the method and VICReg's recipe optimizer, for 160 rounds."""
    from fedssl.config import to_dict

    vicreg = load_config("configs/pretrain/personal-vicreg.yaml")
    measured = load_config(
        "configs/pretrain/personal.yaml",
        [
            "name=pretrain-personal-vicreg",
            "federation.rounds=160",
            "ssl.method=vicreg",
            "train.optimizer=adamw",
            "train.lr=0.001",
            "train.weight_decay=0.0001",
        ],
    )
    assert to_dict(vicreg) == to_dict(measured)
    assert vicreg.ssl.local_layers == ["layer4"] and vicreg.ssl.views == "batched"


def test_a_bare_off_is_the_choice_off_where_a_setting_offers_it(tmp_path):
    """YAML 1.1 reads ``off`` as false: ``--set data.cache=off`` (and a file's ``cache: off``)
    still means the choice ``off``; where a setting has no such choice, false stays an error."""
    assert load_config(None, ["data.cache=off"]).data.cache == "off"
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  cache: off\n")
    assert load_config(p).data.cache == "off"
    with pytest.raises(ConfigError, match="data.cache: expected a string, got True"):
        load_config(None, ["data.cache=on"])
    with pytest.raises(ConfigError, match="ssl.views: expected a string, got False"):
        load_config(None, ["ssl.views=off"])
