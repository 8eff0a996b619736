"""Check a config value against a parameter's type annotation, so a typo fails at build time, not at step N.

Supports the annotations regularizer parameters need: bool, int, float (ints accepted), str, Literal,
list[X], X | None / Union, Any, and plain classes. YAML containers (omegaconf ListConfig) count as lists.
"""
from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

from regularizers.base import InvalidParam


def describe(tp: Any) -> str:
    """The annotation in config words: "one of 'a', 'b'", "a list of int", "null"."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp))
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        return f"a list of {describe(item)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def check_supported(tp: Any, param: str) -> None:
    """Raise TypeError at registration for an annotation `coerce` cannot check (before any config is read)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType, list):
        for arg in get_args(tp):
            check_supported(arg, param)
    elif not (tp is Any or origin is Literal or (origin is None and isinstance(tp, type))):
        raise TypeError(f"parameter {param!r} has an annotation the registry cannot check: {tp!r}")


def coerce(value: Any, tp: Any, param: str) -> Any:
    """`value` converted to `tp` (int -> float, sequence -> list), or `InvalidParam` naming `param`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        # type() as well as ==, so True does not pass for Literal[1]
        if any(type(value) is type(a) and value == a for a in get_args(tp)):
            return value
    elif origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return coerce(value, option, param)
            except InvalidParam:
                continue
    elif origin is list:
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            (item,) = get_args(tp) or (Any,)
            return [coerce(v, item, f"{param}[{j}]") for j, v in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):  # a plain class; check_supported ruled out the rest at registration
        return value
    raise InvalidParam(param, f"expected {describe(tp)}, got {value!r}")
