"""Regularizers by name: `@register("name")` on a class, `build_regularizers(config list)` in the trainer.

Your own regularizer needs no framework edit:

    # my_project/my_reg.py
    from regularizers import LossInputs, Regularizer, register

    @register("my_reg")
    class MyReg(Regularizer):
        power: float = 2.0          # a parameter: typed field with a default (config key `power`)

        def penalty(self, inputs: LossInputs):
            p = inputs.logits.float().abs().pow(self.power).mean()
            return p, {}

Import that module before the regularizers are built (in your entry script, or whatever hook the trainer
offers for user imports); then `regularizers: [{name: my_reg, weight: 0.1, power: 3}]` builds it. Built-ins
are every module of this package, imported by `import regularizers`, so a new built-in is one new file.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Callable, TypeVar, get_type_hints

from regularizers.base import InvalidParam, Regularizer, RegularizerConfigError
from regularizers.params import check_supported, coerce
from settings.registry import Registry

R = TypeVar("R", bound=type[Regularizer])

REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer", RegularizerConfigError)
"""name -> class; each class carries `param_types` (parameter -> annotation), read once at registration."""


def register(name: str) -> Callable[[R], R]:
    """Class decorator: make `cls` a keyword-only dataclass (if it is not one) and build it as `name`."""
    if not name or "/" in name:
        raise ValueError(f"regularizer name {name!r} must be non-empty and free of '/' (it becomes a metric key)")

    def decorate(cls: R) -> R:
        if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
            raise TypeError(f"@register({name!r}) needs a subclass of regularizers.Regularizer, got {cls!r}")
        if "__dataclass_fields__" not in cls.__dict__:
            cls = dataclasses.dataclass(kw_only=True)(cls)
        hints = get_type_hints(cls)
        param_types = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
        for param, tp in param_types.items():
            check_supported(tp, f"{name}.{param}")
        cls.name, cls.param_types = name, param_types
        return REGULARIZERS.add(name, cls)

    return decorate


def available() -> list[str]:
    """Registered names, sorted."""
    return REGULARIZERS.names()


def build_regularizers(specs: Sequence[Mapping[str, Any]] | None) -> list[Regularizer]:
    """One regularizer per `{name, weight?, start_step?, warmup_steps?, ...params}` entry, validated.

    Errors name the offending key as `regularizers[i].<param>` and list what is valid. Two entries may not
    share a name: their metrics would be logged under the same `reg/<name>` keys.
    """
    built: list[Regularizer] = []
    for i, spec in enumerate(specs or []):
        reg = _build_one(i, spec)
        for j, other in enumerate(built):
            if other.name == reg.name:
                raise RegularizerConfigError(
                    f"regularizers[{i}].name: {reg.name!r} is already used by regularizers[{j}]; "
                    "each regularizer may appear once (its metrics are logged under reg/<name>)"
                )
        built.append(reg)
    return built


def _build_one(i: int, spec: Mapping[str, Any]) -> Regularizer:
    where = f"regularizers[{i}]"
    if not isinstance(spec, Mapping):
        raise RegularizerConfigError(f"{where}: expected a mapping with a 'name' key, got {spec!r}")
    name = spec.get("name")
    if name not in REGULARIZERS:
        raise RegularizerConfigError(
            f"{where}.name: unknown regularizer {name!r}; registered: {', '.join(available())} "
            "(register your own with @regularizers.register and import its module before building)"
        )
    cls = REGULARIZERS[name]
    param_types = cls.param_types
    valid = f"valid parameters of {name!r}: {', '.join(param_types)}"
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "name":
            continue
        if key not in param_types:
            raise RegularizerConfigError(f"{where}.{key}: unknown parameter; {valid}")
        try:
            kwargs[key] = coerce(value, param_types[key], key)
        except InvalidParam as e:
            raise RegularizerConfigError(f"{where}.{e}; {valid}") from None
    required = [f.name for f in dataclasses.fields(cls) if f.init and _is_required(f)]
    missing = [p for p in required if p not in kwargs]
    if missing:
        raise RegularizerConfigError(f"{where}.{missing[0]}: required parameter missing; {valid}")
    try:
        return cls(**kwargs)
    except RegularizerConfigError as e:  # InvalidParam from validate(), or a field's rule
        raise RegularizerConfigError(f"{where}.{e}") from None


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
