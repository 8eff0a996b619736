"""Valid values declared on config fields, and the one walker that checks every section against them."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pretrain.config import ConfigError, load_config
from settings.fields import an_integer, at_least, check_fields, choice, count, each, non_negative, positive, ruled, within


@dataclass
class Inner:
    kind: str = choice("a", ("a", "b"))
    count: int = positive(1)


@dataclass
class Outer:
    rate: float = within(0.5, 0.0, 1.0)
    slack: float = non_negative(0.0)
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize("section, message", [
    (Outer(rate=1.5), "rate=1.5 must be in [0, 1]"),
    (Outer(slack=-1.0), "slack=-1.0 must be >= 0"),
    (Outer(inner=Inner(kind="c")), "inner.kind='c' is not valid; choose one of ['a', 'b']"),
    (Outer(inner=Inner(count=0)), "inner.count=0 must be > 0"),
])
def test_a_value_outside_its_declared_range_is_named_with_its_dotted_key(section, message):
    with pytest.raises(ValueError) as err:
        check_fields(section)
    assert str(err.value) == message


@dataclass
class Counted:
    layers: int = count()
    seeds: list = ruled(None, each(an_integer(), at_least(0)))


@pytest.mark.parametrize("section, message", [
    (Counted(layers=0), "layers=0 must be > 0"),
    (Counted(layers=2.0), "layers=2.0 must be an integer"),  # a float with no fraction is still not a count
    (Counted(layers=True), "layers=True must be an integer"),
    (Counted(layers="4"), "layers='4' must be an integer"),  # what YAML makes of a quoted number
    (Counted(layers=1, seeds=[0, 1, -2]), "seeds[2]=-2 must be >= 0"),
    (Counted(layers=1, seeds=[0, "x"]), "seeds[1]='x' must be an integer"),
    (Counted(layers=1, seeds=5), "seeds=5 must be a list"),
])
def test_counts_and_list_items_are_checked_naming_the_item(section, message):
    with pytest.raises(ValueError) as err:
        check_fields(section)
    assert str(err.value) == message


def test_a_count_without_a_default_is_required():
    with pytest.raises(TypeError, match="layers"):
        Counted()
    check_fields(Counted(layers=3, seeds=[0, 7]))


def test_bounds_are_inclusive_where_declared_so():
    check_fields(Outer(rate=0.0, slack=0.0, inner=Inner(kind="b", count=1)))
    check_fields(Outer(rate=1.0))


def test_a_default_outside_its_own_choices_is_a_programming_error():
    with pytest.raises(ValueError, match="not among the choices"):
        choice("z", ("a", "b"))


@pytest.mark.parametrize("override, message", [
    ("train.on_nonfinite=retry", "train.on_nonfinite='retry' is not valid; choose one of ['skip', 'stop', 'rollback']"),
    ("monitors.jump.form=euclid", "monitors.jump.form='euclid' is not valid; choose one of ['cosine', 'angular']"),
    ("monitors.trajectory.dim=0", "monitors.trajectory.dim=0 must be > 0"),
    ("train.min_lr_ratio=2", "train.min_lr_ratio=2.0 must be in [0, 1]"),
    ("jobs.peeling.solver=sgd", "jobs.peeling.solver='sgd' is not valid; choose one of ['adam', 'lstsq']"),
    ("jobs.lm_eval.limit=0", "jobs.lm_eval.limit=0 must be > 0"),
    ("jobs.peeling.mode=thread", "jobs.peeling.mode='thread' is not valid; choose one of ['process', 'inline']"),
])
def test_the_run_config_checks_its_own_and_the_plugins_sections_alike(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny.yaml", [override])
    assert str(err.value) == message


def test_an_unset_optional_field_passes_its_rule():
    from pretrain.probes.lm_eval.settings import LmEvalSettings

    check_fields(LmEvalSettings(limit=None))
    with pytest.raises(ValueError, match="limit=-1 must be > 0"):
        check_fields(LmEvalSettings(limit=-1))


@pytest.mark.parametrize("main_module, argv, message", [
    ("pretrain.data.__main__", ["prepare", "x.jsonl", "--tokenizer", "t.model", "--out", "o", "--shards", "0"],
     "argument --shards: 0 must be > 0"),
    ("pretrain.data.__main__", ["prepare", "x.jsonl", "--tokenizer", "t.model", "--out", "o", "--val-fraction", "2"],
     "argument --val-fraction: 2.0 must be in (0, 1)"),
    ("pretrain.probes.jump.profile", ["m", "--out", "o", "--seq-len", "-4"], "argument --seq-len: -4 must be > 1"),
    ("pretrain.probes.jump.profile", ["m", "--out", "o", "--max-tokens", "many"], "argument --max-tokens: 'many' is not int"),
])
def test_flags_are_refused_in_the_words_of_their_rule(main_module, argv, message, capsys, tmp_path, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(main_module).main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
