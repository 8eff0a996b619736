"""Config fields that carry their valid values, and the one validator that checks them in every section.

A field's valid values sit in its metadata, next to the field and its docstring (`choice`, `positive`,
`non_negative`, `within`, `inside`, `count`, or `ruled(default, *rules)` for a combination; a job's
`setting(..., valid=one_of(...))` takes the same rules), instead of in a table apart from it; `check_fields`
walks a section and the sections nested in it and names the dotted key and what would be valid. The run
config, the model's shape, regularizer parameters and the probes' settings all declare their rules here.
Only checks that relate several fields, or look inside a list, stay in code of their own (pretrain/config.py's
`validate`, a settings' `check()`, a model shape's divisibility). A None value is an unset Optional field and
passes. Pure Python (no torch): the run config and the model config import it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence


def one_of(valid: Sequence[Any]) -> dict[str, Any]:
    """The rule: the value is one of `valid`."""
    return {"choices": tuple(valid)}


def above(low: float) -> dict[str, Any]:
    """The rule: the value is > low."""
    return {"min": low, "strict": True}


def at_least(low: float) -> dict[str, Any]:
    """The rule: the value is >= low."""
    return {"min": low, "strict": False}


def between(low: float, high: float) -> dict[str, Any]:
    """The rule: low <= value <= high."""
    return {"range": (low, high)}


def strictly_between(low: float, high: float) -> dict[str, Any]:
    """The rule: low < value < high."""
    return {"open_range": (low, high)}


def an_integer() -> dict[str, Any]:
    """The rule: the value is an int (not a bool, not a float with no fraction)."""
    return {"integer": True}


def each(*rules: dict[str, Any]) -> dict[str, Any]:
    """The rule: the value is a list whose every item satisfies `rules` (e.g. `each(an_integer())`)."""
    item: dict[str, Any] = {}
    for rule in rules:
        item.update(rule)
    return {"each": item}


def a_device() -> dict[str, Any]:
    """The rule: a torch device this machine has (cpu, cuda, cuda:N)."""
    return {"device": True}


def device_problem(name: str) -> str | None:
    """Why `name` is not a device a job can run on here, or None. Imports torch only for a device other than the
    default cpu (the run config loads without torch)."""
    if name == "cpu":
        return None
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return "is not a torch device (e.g. cpu, cuda, cuda:1)"
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return f"is not on this machine, which has {torch.cuda.device_count()} CUDA devices (use cpu)"
    if device.type not in ("cpu", "cuda"):
        return "is not a device growlm's jobs run on (cpu, cuda, cuda:N)"
    return None


def ruled(default: Any, *rules: dict[str, Any]) -> Any:  # default dataclasses.MISSING: a required field
    """A field that must satisfy every one of `rules` (e.g. `ruled(None, an_integer(), between(1, 16))`)."""
    metadata: dict[str, Any] = {}
    for rule in rules:
        metadata.update(rule)
    return dataclasses.field(default=default, metadata=metadata)


def count(default: Any = dataclasses.MISSING) -> Any:
    """A field that must be an integer > 0 (a width, a number of layers); required without a default."""
    return ruled(default, an_integer(), above(0))


def choice(default: Any, valid: Sequence[Any]) -> Any:
    """A field whose value must be one of `valid`."""
    if default not in valid:
        raise ValueError(f"default {default!r} is not among the choices {list(valid)}")
    return dataclasses.field(default=default, metadata=one_of(valid))


def positive(default: float) -> Any:
    """A field that must be > 0."""
    return dataclasses.field(default=default, metadata=above(0))


def non_negative(default: float) -> Any:
    """A field that must be >= 0."""
    return dataclasses.field(default=default, metadata=at_least(0))


def within(default: float, low: float, high: float) -> Any:
    """A field that must lie in [low, high]."""
    return dataclasses.field(default=default, metadata=between(low, high))


def inside(default: float, low: float, high: float) -> Any:
    """A field that must lie in (low, high)."""
    return dataclasses.field(default=default, metadata=strictly_between(low, high))


def flag(kind: Callable[[str], Any], rule: dict[str, Any]) -> Callable[[str], Any]:
    """An argparse `type` that converts with `kind` and enforces `rule` (one of the rules above), so a command
    line flag is refused in the words a config key is: `--seq-len -4` -> `argument --seq-len: -4 must be > 0`."""
    import argparse

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {getattr(kind, '__name__', 'valid')}") from None
        try:
            check_value("", value, rule)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    return parse


def check_value(key: str, value: Any, metadata: Any) -> None:
    """Raise ValueError naming `key` when `value` breaks the field's declared valid values."""
    if value is None:
        return
    key = f"{key}=" if key else ""
    if metadata.get("device") and (problem := device_problem(value)):
        raise ValueError(f"{key}{value!r} {problem}")
    if "choices" in metadata and value not in metadata["choices"]:
        raise ValueError(f"{key}{value!r} is not valid; choose one of {list(metadata['choices'])}")
    if "each" in metadata:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}{value!r} must be a list")
        for i, item in enumerate(value):
            check_value(f"{key[:-1]}[{i}]" if key else f"[{i}]", item, metadata["each"])
    if metadata.get("integer") and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{key}{value!r} must be an integer")
    bounded = {"min", "range", "open_range"} & set(metadata)
    if bounded and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{key}{value!r} must be a number")
    if "min" in metadata:
        low, strict = metadata["min"], metadata["strict"]
        if value < low or (strict and value == low):
            raise ValueError(f"{key}{value} must be {'>' if strict else '>='} {low}")
    if "range" in metadata:
        low, high = metadata["range"]
        if not low <= value <= high:
            raise ValueError(f"{key}{value} must be in [{low:g}, {high:g}]")
    if "open_range" in metadata:
        low, high = metadata["open_range"]
        if not low < value < high:
            raise ValueError(f"{key}{value} must be in ({low:g}, {high:g})")


def check_fields(section: Any, prefix: str = "") -> None:
    """Every declared field of `section` and of the dataclasses nested in it, in declaration order."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        check_value(f"{prefix}{f.name}", value, f.metadata)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, f"{prefix}{f.name}.")
