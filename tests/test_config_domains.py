"""Every setting's domain, declared beside its field (fedssl.domains), generated into checks: a
numeric or free-text field without a declared domain fails here; every value just outside a
declared domain, and every value outside a field's choices, is refused while loading, naming
the key, the value and what is allowed; the launchers exit 2 on them and write nothing."""

import argparse
import dataclasses
import types
import typing

import pytest

from fedssl import config as C
from fedssl.domains import Checked, Range, Text, domain_of

SECTIONS = {
    "": C.ExperimentConfig,
    "data.": C.DataConfig,
    "model.": C.ModelConfig,
    "train.": C.TrainConfig,
    "federation.": C.FederationConfig,
    "ssl.": C.SSLConfig,
    "finetune.": C.FinetuneConfig,
    "runtime.": C.RuntimeConfig,
    "tracking.": C.TrackingConfig,
    "privacy.dp_sgd.": C.DPSGDConfig,
    "privacy.central.": C.CentralDPConfig,
    "privacy.secagg.": C.SecAggConfig,
}


def _plain(tp):
    """``int`` for ``Annotated[int, ...] | None`` and the like; None for lists and mappings."""
    tp = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _plain(args[0]) if len(args) == 1 else None
    return tp if tp in (int, float, str, bool) else None


def _settings():
    """``(dotted key, plain type, domain, choices)`` of every leaf setting."""
    out = []
    for prefix, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls, include_extras=True)
        choices = getattr(cls, "_choices", {})
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]):
                continue
            tp = hints[f.name]
            out.append((prefix + f.name, _plain(tp), domain_of(tp), choices.get(f.name)))
    return out


SETTINGS = _settings()
OUTSIDE = [
    (key, value)
    for key, tp, dom, _ in SETTINGS
    if isinstance(dom, Range)
    for value in [*dom.outside(), float("nan")]
    if not (tp is int and isinstance(value, float) and value != value)
]
CHOICES = [(key, choices) for key, _, _, choices in SETTINGS if choices]


def _as_text(tp, value) -> str:
    if value != value:
        return "nan"
    return str(int(value)) if tp is int else repr(float(value))


def test_every_numeric_and_free_text_setting_declares_its_domain():
    missing = []
    for key, tp, dom, choices in SETTINGS:
        if tp in (int, float) and not isinstance(dom, Range):
            missing.append(f"{key} ({tp.__name__}): no Range")
        if tp is str and not choices and not isinstance(dom, Text | Checked):
            missing.append(f"{key} (str): no choices, Text or Checked")
    assert not missing, "declare a domain beside these fields (fedssl.domains):\n" + "\n".join(
        missing
    )
    assert len(OUTSIDE) > 60 and len(CHOICES) > 20  # the generation found the settings


def test_every_default_lies_in_its_domain():
    for prefix, cls in SECTIONS.items():
        C.check_domains(cls(), prefix)  # raises for a default outside its own domain


@pytest.mark.parametrize(("key", "value"), OUTSIDE)
def test_a_value_outside_its_domain_is_refused_naming_key_value_and_domain(key, value):
    tp = {k: t for k, t, _, _ in SETTINGS}[key]
    text = _as_text(tp, value)
    with pytest.raises(C.ConfigError) as err:
        C.load_config(None, [f"{key}={text}"])
    msg = str(err.value)
    assert msg.startswith(f"{key}: ") and "not allowed; it must be" in msg, msg


@pytest.mark.parametrize(("key", "choices"), CHOICES)
def test_a_value_outside_its_choices_is_refused_with_the_choices(key, choices):
    with pytest.raises(C.ConfigError, match=f"^{key}: 'bogus' is not allowed; choose one of"):
        C.load_config(None, [f"{key}=bogus"])


def test_the_edges_of_a_domain_are_allowed():
    cfg = C.load_config(
        None,
        ["train.weight_decay=0", "data.dominant_p=1", "federation.fraction_train=1",
         "ssl.min_scale=1", "data.max_per_client=0", "seed=4294967295"],
    )  # fmt: skip
    assert cfg.data.dominant_p == 1.0 and cfg.seed == 2**32 - 1


LAUNCHERS = ["pretrain", "merge", "noniid", "finetune"]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launchers_exit_2_on_every_value_outside_its_domain_and_write_nothing(
    launcher, load_launch, tmp_path, capsys
):
    main = load_launch(launcher).main
    extra = ["--client", "0"] if launcher == "finetune" else []
    for key, value in OUTSIDE:
        tp = {k: t for k, t, _, _ in SETTINGS}[key]
        argv = [*extra, "--set", f"out_dir={tmp_path}", f"{key}={_as_text(tp, value)}"]
        if key == "out_dir":
            argv = [*extra, "--set", f"{key}={_as_text(tp, value)}"]
        assert main(argv) == 2, (launcher, key, value)
        err = capsys.readouterr().err
        assert f"error: {key}: " in err, (launcher, key, err)
    assert list(tmp_path.iterdir()) == []


#: launcher flags that stand for a config key (checked by the key's domain when loaded)
CONFIG_FLAGS = {
    ("pretrain", "--rounds"): "federation.rounds",
    ("pretrain", "--local-epochs"): "train.local_epochs",
    ("pretrain", "--local-steps"): "train.local_steps",
    ("merge", "--rounds"): "federation.rounds",
    ("merge", "--local-epochs"): "train.local_epochs",
    ("merge", "--local-steps"): "train.local_steps",
    ("noniid", "--rounds"): "federation.rounds",
    ("noniid", "--local-epochs"): "train.local_epochs",
    ("noniid", "--local-steps"): "train.local_steps",
    ("noniid", "--p"): "data.dominant_p",
    ("noniid", "--dirichlet"): "data.dirichlet_alpha",
    ("noniid", "--fraction"): "federation.fraction_train",
    ("noniid", "--clients"): "data.num_clients",
    ("noniid", "--lr"): "train.lr",
    ("noniid", "--batch-size"): "train.batch_size",
    ("finetune", "--epochs"): "finetune.epochs",
    ("finetune", "--rounds"): "federation.rounds",
    ("finetune", "--labels-per-class"): "finetune.labels_per_class",
}
COMMANDS = ["pretrain", "merge", "noniid", "finetune", "compare", "crowdsource", "site_worker",
            "supernode", "hub"]  # fmt: skip


class _Captured(Exception):
    pass


def _parsers(command, load_launch, monkeypatch) -> list:
    """Every argparse parser of a command (a hub subcommand's too), as it builds them."""
    if command == "hub":
        from fedssl.hub.cli import parser

        top = [parser()]
    else:
        import argparse

        def capture(self, *a, **k):
            raise _Captured(self)

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(_Captured) as got:
            load_launch(command).main([])
        monkeypatch.undo()
        top = [got.value.args[0]]
    out = []
    while top:
        p = top.pop()
        out.append(p)
        for a in p._actions:
            if a.choices and isinstance(a.choices, dict):  # subcommands
                top.extend(a.choices.values())
    return out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_numeric_option_of_every_command_has_a_domain(command, load_launch, monkeypatch):
    checked = 0
    for parser in _parsers(command, load_launch, monkeypatch):
        for action in parser._actions:
            flag = action.option_strings[-1] if action.option_strings else action.dest
            if action.type in (int, float):
                assert (command, flag) in CONFIG_FLAGS, (
                    f"{command} {flag}: a numeric option needs type=option(<domain>) "
                    "(fedssl.domains) or to stand for a config key (CONFIG_FLAGS here)"
                )
                continue
            dom = getattr(action.type, "domain", None)
            if dom is None:
                continue
            for bad in dom.outside():
                text = str(int(bad)) if action.type.__name__ == "int" else str(bad)
                with pytest.raises(argparse.ArgumentTypeError, match="not allowed"):
                    action.type(text)
                checked += 1
    if command not in ("pretrain", "merge", "noniid", "finetune"):
        assert checked > 0, f"{command}: no numeric option found"


def test_an_option_outside_its_domain_exits_2_naming_the_option(load_launch, capsys):
    with pytest.raises(SystemExit) as code:
        load_launch("crowdsource").main(["--participants", "0"])
    assert code.value.code == 2
    assert "argument --participants: 0 is not allowed; it must be >= 1" in capsys.readouterr().err
    from fedssl.hub.cli import main as hub

    with pytest.raises(SystemExit) as code:
        hub(["serve", "--port", "70000"])
    assert code.value.code == 2
    assert "--port: 70000 is not allowed; it must be in [0, 65535]" in capsys.readouterr().err


@pytest.mark.parametrize(("launcher", "flag", "key"),
                         [(la, fl, key) for (la, fl), key in CONFIG_FLAGS.items()])  # fmt: skip
def test_flags_that_stand_for_a_config_key_are_refused_by_its_domain(
    launcher, flag, key, load_launch, tmp_path, capsys
):
    tp = {k: t for k, t, _, _ in SETTINGS}[key]
    dom = {k: d for k, _, d, _ in SETTINGS}[key]
    extra = ["--client", "0"] if launcher == "finetune" and flag != "--rounds" else []
    extra = ["--federated"] if launcher == "finetune" and flag == "--rounds" else extra
    for bad in dom.outside():
        argv = [*extra, flag, _as_text(tp, bad), "--set", f"out_dir={tmp_path}"]
        assert load_launch(launcher).main(argv) == 2, (launcher, flag, bad)
        err = capsys.readouterr().err
        assert f"error: {key}: " in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_flwr_run_configs_go_through_the_same_check():
    from fedssl.federation.server_app import config_from_run_config

    with pytest.raises(
        C.ConfigError, match=r"^train.batch_size: 0 is not allowed; it must be >= 1"
    ):
        config_from_run_config({"overrides": "train.batch_size=0"})
    with pytest.raises(C.ConfigError, match=r"^ssl.temperature: -0.5 is not allowed"):
        config_from_run_config({"config": "configs/pretrain/default.yaml",
                                "ssl.temperature": -0.5})  # fmt: skip
