"""Experiment kinds: every spec names a registered `kind:`, `python -m experiments` runs it through the registry
(a kind of your own included), and an option the kind does not take is refused naming it."""
from __future__ import annotations

import re

import pytest
import yaml

from experiments.__main__ import main
from experiments.spec import KINDS, ROOT, Kind, spec_kind

SPECS = ROOT / "configs" / "experiments"
RUN_CONFIG_KEYS = {"run", "model", "data", "train"}
"""A file there without `kind:` is a run config or a stacking plan that a spec or `python -m experiments stack`
reads, never a spec."""


def test_every_shipped_spec_names_a_registered_kind():
    kinds = {}
    for path in sorted(SPECS.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "kind" in raw:
            kinds[path.stem] = spec_kind(path)
        else:
            assert not {"arms", "growths", "alphas", "adaptive_pool"} & set(raw), f"{path.name} is a spec without kind:"
    assert set(kinds.values()) == {"arms", "lag", "planted", "stacking"} == set(KINDS.names())
    assert kinds["lag_cpu"] == "lag" and kinds["jreg_cpu"] == "arms"


@pytest.mark.parametrize("text, message", [
    ("arms: {a: {}}\n", r"`kind:` is missing; it names an experiment kind: one of arms, lag, planted, stacking"),
    ("kind: sweep\narms: {a: {}}\n", r"kind='sweep' is not an experiment kind: one of arms, lag"),
])
def test_a_spec_without_a_registered_kind_is_refused_naming_the_kinds(tmp_path, capsys, text, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert main([str(spec), "--out", str(tmp_path / "out")]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("spec, argv, message", [
    ("peeling_planted.yaml", ["--seeds", "0"], "--seeds does not apply to .*a 'planted' spec; it takes only --out"),
    ("lag_cpu.yaml", ["--dry-run"], "--dry-run does not apply to .*a 'lag' spec; it takes --growths, --seeds"),
    ("jreg_cpu.yaml", ["--growths", "d2_to_4"], "--growths does not apply to .*a 'arms' spec; it takes --seeds, --arms"),
])
def test_an_option_the_kind_does_not_take_is_refused(tmp_path, capsys, spec, argv, message):
    assert main([str(SPECS / spec), "--out", str(tmp_path / "out"), *argv]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_kind_of_your_own_runs_through_the_registry(tmp_path, monkeypatch):
    monkeypatch.setattr(KINDS, "_entries", dict(KINDS._entries))
    seen = []
    KINDS.add("toy", Kind(run=lambda args: seen.append((args.spec.name, args.seeds)) or 7, options=("seeds",),
                          doc="a test's kind"))
    spec = tmp_path / "toy.yaml"
    spec.write_text("kind: toy\nanything: 1\n")
    assert main([str(spec), "--out", str(tmp_path / "out"), "--seeds", "3,4"]) == 7
    assert seen == [("toy.yaml", [3, 4])]
    with pytest.raises(ValueError, match="experiment kind 'toy' is already registered"):
        KINDS.add("toy", Kind(run=print, options=(), doc="another"))
