"""Config overrides as the command line takes them: one renderer for every spec that lists them as a mapping."""
from __future__ import annotations

import json
from typing import Any, Optional


def render(mapping: Optional[dict[str, Any]], where: str) -> list[str]:
    """{key: value} -> ['key=value']: strings as they are, everything else (numbers, booleans, None, lists,
    mappings) in JSON flow form, which the dotlist parser reads back as the same value (None -> null).
    `where` names the spec and key in the error."""
    if mapping is None:
        return []
    if not isinstance(mapping, dict):
        raise ValueError(f"{where} must be a mapping of config key -> value, got {mapping!r}")
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in mapping.items()]
