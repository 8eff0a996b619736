"""Registries of the trainer's plug-ins: periodic jobs (`jobs:`) and in-training monitors (`monitors:`).

Each entry is a name, a settings dataclass (the config section `<registry>.<name>`) and the callback built
from it when the section's `every` is > 0. Regularizers and growth operators have registries of their own;
this is the same idea for callbacks. A plug-in of your own is one module that calls `register_job` or
`register_monitor` and is named in the config's `imports:`, which are imported before the config is parsed,
so its section is typed and checked like a built-in one.

Settings-only on purpose: the run config imports this module, so it names built-in callbacks by
"module:Class" and imports them only when a run builds them (no torch, no trainer at config time).
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from pretrain.jobs.lm_eval.settings import LmEvalConfig
from pretrain.jobs.peeling.settings import PeelingConfig
from pretrain.jump.settings import JumpMonitorConfig
from pretrain.trajectory.settings import TrajectoryConfig

CallbackFactory = Union[str, Callable[[Any], Any]]
"""A callable settings -> Callback, or its "module:attribute" path (imported when first built)."""


@dataclass(frozen=True)
class Plugin:
    name: str
    settings: type
    callback: CallbackFactory
    doc: str = ""

    def build(self, settings: Any) -> Any:
        factory = self.callback
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        return factory(settings)


@dataclass
class Registry:
    """name -> Plugin for one config section; its `schema()` is that section's dataclass."""

    section: str
    plugins: dict[str, Plugin] = field(default_factory=dict)

    def register(self, name: str, settings: type, callback: CallbackFactory, doc: str = "") -> None:
        if not name.isidentifier():
            raise ValueError(f"{self.section} plug-in name {name!r} must be a Python identifier (it is a config key)")
        if not dataclasses.is_dataclass(settings):
            raise TypeError(f"{self.section}.{name}: settings must be a dataclass, got {settings!r}")
        if "every" not in {f.name for f in dataclasses.fields(settings)}:
            raise TypeError(f"{self.section}.{name}: settings {settings.__name__} need an `every` field "
                            "(0 disables the plug-in)")
        known = self.plugins.get(name)
        if known is not None and (known.settings, known.callback) != (settings, callback):
            raise ValueError(f"{self.section}.{name} is already registered (by {known.settings.__module__}); "
                             "choose another name")
        self.plugins[name] = Plugin(name, settings, callback, doc)

    def schema(self) -> type:
        """The section's dataclass: one field per registered plug-in, defaulting to its settings' defaults."""
        fields = [(name, p.settings, field(default_factory=p.settings, metadata={"doc": p.doc}))
                  for name, p in self.plugins.items()]
        return dataclasses.make_dataclass(f"{self.section.capitalize()}Config", fields)

    def defaults(self) -> Any:
        return self.schema()()

    def check(self, section: Any) -> None:
        """Each plug-in's own `check()` (when its settings define one), its error prefixed with the key."""
        for name in self.plugins:
            settings = getattr(section, name)
            if settings.every < 0:
                raise ValueError(f"{self.section}.{name}.every={settings.every} must be >= 0")
            check = getattr(settings, "check", None)
            if check is not None:
                try:
                    check()
                except ValueError as err:
                    raise ValueError(f"{self.section}.{name}.{err}") from None

    def build(self, section: Any) -> list[Any]:
        """The callbacks of the enabled plug-ins (`every` > 0), in registration order."""
        return [p.build(getattr(section, name)) for name, p in self.plugins.items()
                if getattr(section, name).every > 0]


JOBS = Registry("jobs")
MONITORS = Registry("monitors")


def register_job(name: str, settings: type, callback: CallbackFactory, doc: str = "") -> None:
    """A job on saved checkpoints: `jobs.<name>` is typed by `settings`; `callback(settings)` is usually a
    pretrain.jobs.detached.CheckpointJob subclass."""
    JOBS.register(name, settings, callback, doc)


def register_monitor(name: str, settings: type, callback: CallbackFactory, doc: str = "") -> None:
    """An in-training monitor: `monitors.<name>` is typed by `settings`; `callback(settings)` a Callback."""
    MONITORS.register(name, settings, callback, doc)


register_monitor("jump", JumpMonitorConfig, "pretrain.jump.callback:JumpMonitor", "Hidden-state jump profile.")
register_monitor("trajectory", TrajectoryConfig, "pretrain.trajectory.online:TrajectorySketch",
                 "Online trajectory sketch: traj/<group>/mds (docs/methods.md §4; pretrain/trajectory/online.py).")
register_job("peeling", PeelingConfig, "pretrain.jobs.peeling.callback:PeelingJob",
             "Peeling bounds on saved checkpoints.")
register_job("lm_eval", LmEvalConfig, "pretrain.jobs.lm_eval.callback:LmEvalJob",
             "Downstream evaluation with lm-evaluation-harness (pip install 'growlm[eval]').")
