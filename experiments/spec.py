"""Experiment specs (configs/experiments/*.yaml): the registry of their kinds, and the arm x seed spec, read and
checked before anything runs (here because both the runner, experiments/arms.py, and compare_runs' `--spec` read
it).

Every spec names its `kind:`, a name in `KINDS`; each kind registers itself in its own module with
`KINDS.add(name, Kind(...))` (docs/guide.md, "Adding an experiment kind").

The arm x seed spec (`kind: arms`): `base` config (relative to the repository root), `ranks`, `seeds` (every arm
runs every seed), shared `overrides`, `arms` (name -> overrides), each overrides a mapping of config key ->
value, and an optional pre-registered `protocol` (experiments/protocol.py).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import OmegaConf

from experiments.errors import ExperimentError
from experiments.protocol import Protocol, parse_protocol
from launch.command import render_overrides
from settings.fields import an_integer, check_fields, count, each, ruled
from settings.registry import Registry
from storage.io import FileFormatError, read_yaml

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: a spec's `base` config is relative to it, and runs start there."""

SPEC_KEYS = {"base", "ranks", "seeds", "overrides", "arms", "protocol"}

OPTIONS = {"seeds": "--seeds", "arms": "--arms", "growths": "--growths", "dry_run": "--dry-run",
           "overrides": "overrides"}
"""`python -m experiments` options beyond the spec and --out, by their argparse name; a kind takes a subset."""


@dataclass(frozen=True)
class Kind:
    """One kind of spec: how `python -m experiments SPEC --out DIR` runs it, and which OPTIONS it takes."""

    run: Callable[[argparse.Namespace], int]
    options: tuple[str, ...]
    doc: str


KINDS: Registry[Kind] = Registry("experiment kind", ExperimentError)


def spec_kind(path: Path) -> str:
    """The registered kind a spec names in its `kind:` key; else an error naming the file and the valid kinds."""
    raw = _read_mapping(path, ExperimentError)
    raw = raw if isinstance(raw, dict) else {}
    kind = raw.get("kind")
    if kind not in KINDS:
        found = f"kind={kind!r} is not" if "kind" in raw else "`kind:` is missing; it names"
        raise ExperimentError(f"{path}: {found} an experiment kind: one of {', '.join(KINDS.names())} "
                              "(docs/guide.md, 'Experiment specs and their kinds')")
    return kind


@dataclass
class Spec:
    base: Path
    ranks: int = count()
    seeds: list[int] = ruled(MISSING, each(an_integer()))
    overrides: list[str]
    arms: dict[str, list[str]]
    protocol: Optional[Protocol] = None


def read_spec(path: Path, keys: set[str], required: set[str],
              error: type[Exception] = ExperimentError) -> dict[str, Any]:
    """The top-level mapping of a spec file, with no key outside `keys` and every key of `required`; else
    `error` naming the file and the keys (LAG and stacking specs raise growth's own error)."""
    raw = _read_mapping(path, error)
    keys = keys | {"kind"}  # spec_kind read it
    if not isinstance(raw, dict):
        raise error(f"{path}: an experiment spec is a mapping with keys {sorted(keys)}")
    if unknown := set(raw) - keys:
        raise error(f"{path}: unknown keys {sorted(unknown)} (valid: {sorted(keys)})")
    if missing := required - set(raw):
        raise error(f"{path}: missing keys {sorted(missing)}")
    return raw


def missing_config(config: Path) -> str | None:
    """Why a spec's run `config` cannot be read, or None: a relative path is read from the working directory,
    which the message names with the fix when the file is there under the repository root."""
    if config.is_file():
        return None
    if not config.is_absolute() and (ROOT / config).is_file():
        return (f"config {config} does not exist under the working directory {Path.cwd()}: run from the "
                f"repository root ({ROOT}), or give the config's absolute path")
    return f"config {config} does not exist"


def check_spec(spec: Any, path: Path, error: type[Exception] = ExperimentError) -> None:
    """A spec dataclass's declared field rules (settings/fields.py), refused as `error` naming the file and key."""
    try:
        check_fields(spec)
    except ValueError as err:
        raise error(f"{path}: {err}") from None


def _read_mapping(path: Path, error: type[Exception]) -> Any:
    try:
        return OmegaConf.to_container(read_yaml(path, "experiment spec")) or {}
    except FileFormatError as err:
        raise error(str(err)) from None


def load_spec(path: Path) -> Spec:
    """Read and check an experiment spec; errors name the file and the offending key."""
    raw = read_spec(path, SPEC_KEYS, set())
    if not raw.get("arms") or not isinstance(raw["arms"], dict):
        raise ExperimentError(f"{path}: `arms` must map at least one arm name to its overrides")
    base = ROOT / raw.get("base", "configs/tiny.yaml")
    if not base.is_file():
        raise ExperimentError(f"{path}: base config {base} does not exist")
    ranks, seeds = raw.get("ranks", 2), raw.get("seeds", [0])
    check_spec(Spec(base=base, ranks=ranks, seeds=seeds, overrides=[], arms={}), path)
    if not seeds:
        raise ExperimentError(f"{path}: seeds=[] must list at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ExperimentError(f"{path}: seeds={seeds} lists a seed twice (each arm x seed is one run)")
    bad_names = [name for name in raw["arms"] if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name))]
    if bad_names:
        raise ExperimentError(f"{path}: arm names {bad_names} must be letters, digits, '_', '-' or '.' (they name run "
                              "directories under --out)")
    protocol = None
    if "protocol" in raw:
        protocol = parse_protocol(raw["protocol"], list(raw["arms"]), seeds, f"{path}: protocol")
    return Spec(base=base, ranks=ranks, seeds=seeds,
                overrides=render_overrides(raw.get("overrides"), f"{path}: overrides"),
                arms={name: render_overrides(o, f"{path}: arms.{name}") for name, o in raw["arms"].items()},
                protocol=protocol)
