"""The one registry every plug-in kind is named in: lookup errors name the name and the registered ones, a taken
name cannot be given to another entry, and registering the same entry again (a module imported twice) is fine."""
from __future__ import annotations

import pytest

from settings.errors import UserError
from settings.registry import Registry, UnknownName


class WidgetError(UserError):
    pass


def test_an_unknown_name_raises_the_registrys_error_listing_the_registered_names():
    widgets: Registry[int] = Registry("widget", WidgetError)
    widgets.add("b", 2)
    widgets.add("a", 1)
    with pytest.raises(WidgetError, match=r"unknown widget 'c'; registered: a, b$"):
        widgets["c"]
    with pytest.raises(UnknownName, match="registered: none"):
        Registry("gadget")["x"]
    assert (widgets["a"], widgets.names(), list(widgets), len(widgets)) == (1, ["a", "b"], ["b", "a"], 2)


def test_a_taken_name_is_refused_and_the_same_entry_again_is_not():
    widgets: Registry = Registry("widget")

    @widgets.register("spin")
    def spin() -> str:
        return "spun"

    assert widgets["spin"] is spin and spin() == "spun"  # the decorator returns what it registered
    widgets.add("spin", spin)
    with pytest.raises(ValueError, match="widget 'spin' is already registered by .*spin; choose another name"):
        widgets.add("spin", lambda: "other")
    assert widgets["spin"] is spin
