"""Loss terms added to cross-entropy, built by name from the `regularizers:` config list.

Every module of this package is imported here, so a built-in regularizer is one new file with `@register`;
a user's own is registered by importing its module before `build_regularizers` (see `regularizers.registry`).
This package never imports `pretrain`: the trainer imports us.
"""
import importlib
import pkgutil

from regularizers.base import LossInputs, Regularizer, RegularizerConfigError
from regularizers.jump import displacement, displacement_profile, jump_rate, zeta_final
from regularizers.registry import available, build_regularizers, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "LossInputs",
    "Regularizer",
    "RegularizerConfigError",
    "register",
    "build_regularizers",
    "available",
    "displacement",
    "displacement_profile",
    "jump_rate",
    "zeta_final",
]
