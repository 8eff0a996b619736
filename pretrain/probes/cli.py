"""A job's settings dataclass as a command line: the job's CLI flags and the argv the trainer starts a detached
job with come from the same fields, so the two can never drift apart.

Each field's `help` metadata (set with `setting`) is its documentation, and its valid values sit beside it
(settings/fields.py). Lists travel comma-joined; a None
value is left out (the CLI's default is None too); fields marked `cli=False` (the schedule) stay in the config.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import field
from typing import Any, Callable


def setting(default: Any, help: str, cli: bool = True, valid: dict[str, Any] | None = None) -> Any:
    """A settings field with its documentation (`cli=False`: a config-only field, not a job flag) and its valid
    values (a rule of settings/fields.py: `one_of(...)`, `above(0)`, ...), which `check_fields` enforces."""
    metadata = {"help": help, "cli": cli, **(valid or {})}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _list_of(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None
    return parse


def _parser_type(hint: Any) -> Callable[[str], Any]:
    """str -> value for a field's type: List[X] comma-separated, Optional[X] as X."""
    if typing.get_origin(hint) is list:
        return _list_of(typing.get_args(hint)[0])
    if typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag` per CLI field of the settings dataclass `cls`, with its help and default."""
    hints, defaults = typing.get_type_hints(cls), cls()
    for f in cli_fields(cls):
        default = getattr(defaults, f.name)
        shown = (",".join(map(str, default)) or "all") if isinstance(default, list) else default
        parser.add_argument(flag(f.name), dest=f.name, type=_parser_type(hints[f.name]), default=default,
                            help=f"{f.metadata.get('help', '')} (default: {shown})")


def from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in cli_fields(cls)})


def to_argv(settings: Any) -> list[str]:
    """The flags that reproduce `settings` in another process."""
    argv = []
    for f in cli_fields(type(settings)):
        value = getattr(settings, f.name)
        if value is not None:
            argv += [flag(f.name), ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return argv
