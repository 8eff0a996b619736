"""The one way growlm names plug-ins: regularizers, growth operators, probes, peeling permutations and experiment
kinds are each a `Registry`, and a plug-in registers itself where it is defined (`@REGISTRY.register("name")`
or `REGISTRY.add(name, entry)`). Looking up an unknown name raises the registry's own error naming the name
and what is registered, so a config typo reads the same in every section.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from settings.errors import UserError

T = TypeVar("T")
F = TypeVar("F")


class UnknownName(UserError):
    """A name no plug-in registered (the default error of a registry)."""


class Registry(Generic[T]):
    """name -> entry for one kind of plug-in, in registration order.

    `what` names the kind in messages ("regularizer", "growth operator"); `error` is the exception an unknown
    name raises (a package's own UserError, so callers can tell them apart). Registering a second, different
    entry under a taken name is a programming error (ValueError); registering the same entry again (a module
    imported twice) is harmless.
    """

    def __init__(self, what: str, error: type[Exception] = UnknownName) -> None:
        self.what = what
        self.error = error
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        known = self._entries.get(name)
        if known is not None and known != entry:
            raise ValueError(f"{self.what} {name!r} is already registered by {_origin(known)}; choose another name")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register the decorated object itself as `name`."""
        def decorate(obj: F) -> F:
            self.add(name, obj)  # type: ignore[arg-type]
            return obj
        return decorate

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise self.error(f"unknown {self.what} {name!r}; registered: {', '.join(self.names()) or 'none'}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)


def _origin(entry: object) -> str:
    """What holds a name: a class or function by its qualified name, any other entry by its repr."""
    return getattr(entry, "__qualname__", None) or repr(entry)
