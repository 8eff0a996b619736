"""Which trajectory group a parameter belongs to, at a chosen granularity.

The directional-structure analysis (docs/methods.md §4) is read per group: each layer's q, k, v, o, MLP and norms,
the embeddings, the head. Every parameter of the Llama lands in exactly one group; a name we do not know is an
error (a silent catch-all group would hide a renamed parameter).
"""
from __future__ import annotations

import re
from typing import Iterable

from pretrain.probes.trajectory.settings import GRANULARITIES  # component: L<i>.{q,k,v,o,mlp,norms}, embed, final_norm,

# head | layer: L<i>, embed, final_norm, head | model: one group | param: every parameter alone

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_COMPONENT = {
    "attention.wq.weight": "q",
    "attention.wk.weight": "k",
    "attention.wv.weight": "v",
    "attention.wo.weight": "o",
    "feed_forward.w1.weight": "mlp",
    "feed_forward.w2.weight": "mlp",
    "feed_forward.w3.weight": "mlp",
    "attention_norm.weight": "norms",
    "ffn_norm.weight": "norms",
}
_TOP = {"tok_embeddings.weight": "embed", "norm.weight": "final_norm", "output.weight": "head"}


def group_of(name: str, granularity: str = "component") -> str:
    """The group of one parameter name; raises on an unknown name or granularity."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r} is not valid; choose one of {list(GRANULARITIES)}")
    if granularity == "param":
        return name
    if granularity == "model":
        return "model"
    if name in _TOP:
        return _TOP[name]
    m = _LAYER.match(name)
    if m is None or m.group(2) not in _COMPONENT:
        raise KeyError(f"parameter {name!r} belongs to no trajectory group (known: {sorted(_TOP)} and "
                       f"layers.<i>.{{{', '.join(sorted(_COMPONENT))}}})")
    layer = f"L{m.group(1)}"
    return f"{layer}.{_COMPONENT[m.group(2)]}" if granularity == "component" else layer


def group_params(names: Iterable[str], granularity: str = "component") -> dict[str, list[str]]:
    """Group -> parameter names, groups in first-seen order (model order when `names` is)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(group_of(name, granularity), []).append(name)
    return groups


def layer_component(group: str) -> tuple[int, str] | None:
    """(layer, component) of a component-granularity layer group such as 'L3.q'; None for other groups."""
    m = re.match(r"^L(\d+)\.(\w+)$", group)
    return (int(m.group(1)), m.group(2)) if m else None


def trajectory_names(names: Iterable[str], tie_embeddings: bool) -> list[str]:
    """The parameter names to follow: a tied head is the embedding matrix, counted once (as `embed`)."""
    return [n for n in names if not (tie_embeddings and n == "output.weight")]
