"""The probes' two registries: periodic jobs on saved checkpoints (`jobs:`) and in-training monitors (`monitors:`).

Each entry is a name, a settings dataclass (the config section `<registry>.<name>`) and the callback built
from it when the section's `every` is > 0. A probe registers itself in its own `settings` module (built-ins:
every package of pretrain/probes/, imported by `import pretrain.probes`); a probe of your own is one module
that calls `register_job` or `register_monitor` and is named in the config's `imports:`, which are imported
before the config is parsed, so its section is typed and checked like a built-in one.

Settings-only on purpose: the run config imports this module, so a settings module names its callback by
"module:Class", imported only when a run builds it (no torch, no trainer at config time).
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from settings.registry import Registry

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


class PluginRegistry(Registry[Plugin]):
    """name -> Plugin for one config section; its `schema()` is that section's dataclass."""

    def __init__(self, section: str) -> None:
        super().__init__(f"{section} plug-in")
        self.section = section

    def add_plugin(self, name: str, settings: type, callback: CallbackFactory, doc: str = "") -> None:
        if not name.isidentifier():
            raise ValueError(f"{self.section} plug-in name {name!r} must be a Python identifier (it is a config key)")
        if not dataclasses.is_dataclass(settings):
            raise TypeError(f"{self.section}.{name}: settings must be a dataclass, got {settings!r}")
        if "every" not in {f.name for f in dataclasses.fields(settings)}:
            raise TypeError(f"{self.section}.{name}: settings {settings.__name__} need an `every` field "
                            "(0 disables the plug-in)")
        self.add(name, Plugin(name, settings, callback, doc))

    def schema(self) -> type:
        """The section's dataclass: one field per registered plug-in, defaulting to its settings' defaults."""
        fields = [(name, p.settings, field(default_factory=p.settings, metadata={"doc": p.doc}))
                  for name, p in self.items()]
        return dataclasses.make_dataclass(f"{self.section.capitalize()}Config", fields)

    def defaults(self) -> Any:
        return self.schema()()

    def check(self, section: Any) -> None:
        """Each plug-in's own `check()` (when its settings define one), its error prefixed with the key."""
        for name in self:
            settings = getattr(section, name)
            if settings.every < 0:
                raise ValueError(f"{self.section}.{name}.every={settings.every} must be >= 0")
            check = getattr(settings, "check", None)
            if check is not None:
                try:
                    check()
                except ValueError as err:
                    raise ValueError(f"{self.section}.{name}.{err}") from None


def build_plugins(*sections: tuple[PluginRegistry, Any]) -> list[Any]:
    """The callbacks of the enabled plug-ins (`every` > 0) of each (registry, config section), in order."""
    return [p.build(getattr(section, name)) for registry, section in sections for name, p in registry.items()
            if getattr(section, name).every > 0]


JOBS = PluginRegistry("jobs")
MONITORS = PluginRegistry("monitors")


def register_job(name: str, settings: type, callback: CallbackFactory, doc: str = "") -> None:
    """A job on saved checkpoints: `jobs.<name>` is typed by `settings`; `callback(settings)` is usually a
    pretrain.probes.detached.CheckpointJob subclass."""
    JOBS.add_plugin(name, settings, callback, doc)


def register_monitor(name: str, settings: type, callback: CallbackFactory, doc: str = "") -> None:
    """An in-training monitor: `monitors.<name>` is typed by `settings`; `callback(settings)` a Callback."""
    MONITORS.add_plugin(name, settings, callback, doc)

