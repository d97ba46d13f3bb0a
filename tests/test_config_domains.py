"""Every setting's domain, declared beside its field (fedssl.domains), generated into checks: a
numeric or free-text field without a declared domain fails here; every value just outside a
declared domain, and every value outside a field's choices, is refused while loading, naming
the key, the value and what is allowed; the launchers exit 2 on them and write nothing."""

import dataclasses
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
}


def _plain(tp):
    """``int`` for ``Annotated[int, ...] | None`` and the like; None for lists and mappings."""
    tp = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
    if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType):
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


@pytest.mark.parametrize(
    ("launcher", "argv", "key"),
    [
        ("pretrain", ["--rounds", "0"], "federation.rounds"),
        ("pretrain", ["--local-steps", "-1"], "train.local_steps"),
        ("noniid", ["--p", "1.7"], "data.dominant_p"),
        ("noniid", ["--clients", "0"], "data.num_clients"),
        ("noniid", ["--lr", "-0.5"], "train.lr"),
        ("noniid", ["--batch-size", "0"], "train.batch_size"),
        ("noniid", ["--fraction", "0"], "federation.fraction_train"),
        ("noniid", ["--dirichlet", "0"], "data.dirichlet_alpha"),
        ("finetune", ["--client", "0", "--epochs", "0"], "finetune.epochs"),
        ("finetune", ["--client", "0", "--labels-per-class", "-1"], "finetune.labels_per_class"),
        ("finetune", ["--federated", "--rounds", "0"], "federation.rounds"),
    ],
)
def test_launcher_flags_go_through_the_same_check(launcher, argv, key, load_launch, tmp_path,
                                                  capsys):  # fmt: skip
    main = load_launch(launcher).main
    assert main([*argv, "--set", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"error: {key}: " in err and "\n" == err[-1] and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
