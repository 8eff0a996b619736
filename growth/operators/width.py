"""Width growth: Net2Net/bert2BERT unit duplication and Deep Fusion, over one table of unit spaces.

Every parameter's axes live in a unit space: the residual stream ("resid"), query heads' channels ("q"),
key/value heads' channels ("kv"), SwiGLU hidden units ("ffn") or the vocabulary ("vocab", never grown).
Both operators map each axis through its space and scale the result by the split factors below; they differ
only in how the source units are laid out (duplicated copies vs two side-by-side models).

Split factors (counts[s] = how many new units stand for one source unit in space s):
- weight: a tensor that *sums* over copies of its input units is divided by their count (Net2Net), so the
  copies together contribute what the original did;
- gradient (for the moments, see moments.py): each copy of an output unit receives 1/count of the original
  downstream gradient, so the tensor's gradient is the source's divided by counts[writes];
- the final norm and the LM head swap their factors: the head's 1/count moves into the final norm's gain, so
  the head is a plain copy and a tied head stays equal to the (copied) embedding.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
from torch import Tensor

from growth.operators.base import GrowthError, GrowthResult, OptState, StateDict
from growth.operators.checks import GROWN_FIELDS, check_opt_state, check_state
from growth.operators.moments import map_moments
from growth.operators.registry import register_operator
from model import ModelConfig


@dataclass(frozen=True)
class _Param:
    axes: tuple[str, ...]
    """Unit space of each tensor axis."""
    reads: str | None
    """Space the parameter sums over (None: an elementwise gain or an embedding lookup)."""
    writes: str
    """Space of its output."""


_PARAMS = {
    "tok_embeddings.weight": _Param(("vocab", "resid"), None, "resid"),
    "attention_norm.weight": _Param(("resid",), None, "resid"),
    "ffn_norm.weight": _Param(("resid",), None, "resid"),
    "attention.wq.weight": _Param(("q", "resid"), "resid", "q"),
    "attention.wk.weight": _Param(("kv", "resid"), "resid", "kv"),
    "attention.wv.weight": _Param(("kv", "resid"), "resid", "kv"),
    "attention.wo.weight": _Param(("resid", "q"), "q", "resid"),
    "feed_forward.w1.weight": _Param(("ffn", "resid"), "resid", "ffn"),
    "feed_forward.w3.weight": _Param(("ffn", "resid"), "resid", "ffn"),
    "feed_forward.w2.weight": _Param(("resid", "ffn"), "ffn", "resid"),
    "norm.weight": _Param(("resid",), None, "resid"),
    "output.weight": _Param(("vocab", "resid"), "resid", "vocab"),
}
_FOLDED = ("norm.weight", "output.weight")


@register_operator("net2net", kind="width")
def net2net(cfg: ModelConfig, state: StateDict, target: ModelConfig, *,
            opt_state: OptState | None = None, noise: float = 0.0, seed: int = 0) -> GrowthResult:
    """Function-preserving widening by unit duplication (Net2Net, Chen et al. 2016; bert2BERT's FPI).

    Residual units are duplicated cyclically (new unit t copies t mod dim) by an integer factor k =
    target.dim / dim: every unit exactly k times keeps each token's RMS, so every RMSNorm is exact (partial
    duplication would change the RMS; LEMON corrects that, we refuse it). With head_dim fixed, n_heads grows by
    the same k; key/value heads grow by m (m divides k) and whole GQA groups are copied, so each copied query
    head still attends with a copy of its own key/value head. ffn_dim may grow by any amount (unit t copies
    t mod ffn_dim; uneven counts are split exactly).

    Copies stay identical under training unless something breaks the symmetry. `noise` > 0 does, without
    giving up the function: every tensor that sums over copies of an input unit gets noise of std `noise` x
    its own std on those copies' weights, made zero-sum over each unit's copies (one copy's +e is another's
    -e, the halves-with-opposite-noise trick). The copies see the same input, so their sum -- the output --
    is unchanged up to float rounding, while each copy now sends a different gradient back. A tied head is
    left alone (its noise would be the embedding's, which changes the function).
    """
    k = target.dim // cfg.dim
    if target.dim % cfg.dim:
        raise GrowthError(f"net2net grows model.dim by an integer factor (duplicating every residual unit equally "
                          f"keeps each token's RMS, so RMSNorm stays exact): source {cfg.dim}, target {target.dim}")
    n_rep, n_rep_t = cfg.n_heads // cfg.n_kv_heads, target.n_heads // target.n_kv_heads
    if target.n_kv_heads % cfg.n_kv_heads or n_rep_t % n_rep:
        valid = [cfg.n_kv_heads * m for m in range(1, k + 1) if k % m == 0]
        raise GrowthError(f"net2net copies whole GQA groups: target model.n_kv_heads={target.n_kv_heads} must be "
                          f"the source's {cfg.n_kv_heads} times a divisor of the head growth factor {k}; "
                          f"valid: {valid}")
    kv_heads = torch.arange(target.n_kv_heads) % cfg.n_kv_heads
    q_heads = (kv_heads[:, None] * n_rep + torch.arange(n_rep_t) % n_rep).flatten()
    units = {"resid": torch.arange(target.dim) % cfg.dim, "q": q_heads, "kv": kv_heads,
             "ffn": torch.arange(target.ffn_dim) % cfg.ffn_dim}
    index = {"resid": units["resid"], "q": _channels(q_heads, cfg.head_width), "kv": _channels(kv_heads, cfg.head_width),
             "ffn": units["ffn"], "vocab": torch.arange(cfg.vocab_size)}
    counts = {s: torch.bincount(i)[i].to(torch.float32) for s, i in index.items()}

    def gather(t: Tensor, axes: tuple[str, ...]) -> Tensor:
        for axis, space in enumerate(axes):
            t = t.index_select(axis, index[space])
        return t

    record = {"function_preserving": True, "dim_factor": k,
              "units": {"resid": units["resid"].tolist(), "q_heads": q_heads.tolist(),
                        "kv_heads": kv_heads.tolist(), "ffn": units["ffn"].tolist()},
              "note": "new unit/head i copies source unit/head units[space][i]"}
    if noise < 0:
        raise GrowthError(f"net2net noise={noise} must be >= 0 (a std relative to each tensor's std)")
    record["symmetry_noise"] = noise
    result = _build(target, [state], [opt_state] if opt_state is not None else None, gather, counts,
                    split_reads=lambda p: True, record=record)
    if noise > 0:
        _break_symmetry(result.state_dict, target, units | {"q": index["q"]}, noise, seed)
    return result


def _break_symmetry(state: StateDict, target: ModelConfig, source_unit: dict[str, Tensor], noise: float,
                    seed: int) -> None:
    """Add zero-sum noise over the copies of each input unit to every tensor that reads copied units (in place)."""
    gen = torch.Generator().manual_seed(seed)
    for name, weight in state.items():
        suffix = name.split(".", 2)[-1] if name.startswith("layers.") else name
        param = _PARAMS[suffix]
        if param.reads is None or (name == "output.weight" and target.tie_embeddings):
            continue
        axis = param.axes.index(param.reads)
        groups = source_unit[param.reads]
        eps = torch.randn(weight.shape, generator=gen).movedim(axis, -1) * noise * weight.float().std()
        group_sum = torch.zeros(*eps.shape[:-1], int(groups.max()) + 1).index_add_(-1, groups, eps)
        eps -= (group_sum / torch.bincount(groups))[..., groups]
        state[name] = (weight.float() + eps.movedim(-1, axis)).to(weight.dtype)


@register_operator("fusion", kind="width")
def fusion(cfg: ModelConfig, state: StateDict, target: ModelConfig, *, opt_state: OptState | None = None,
           other_state: StateDict | None = None, other_opt_state: OptState | None = None, noise: float = 0.0,
           seed: int = 0) -> GrowthResult:
    """Deep Fusion (Mazzawi et al. 2023, arXiv 2306.11903): two models of one config side by side in a model
    twice as wide -- every widened axis holds the first model's units then the second's, block-diagonal
    weights keep the two computations apart, and the head averages their logits (its 1/2 folded into the
    final norm gain). Without `other_state` the model is fused with itself ("self fusion"): exact. With two
    different models every RMSNorm runs over the concatenated stream and so divides each half by the mean of
    the two models' mean squares rather than its own: the fused model only approximates the average of their
    logits, and the record says so rather than claim preservation.

    Off-diagonal blocks start at zero and so do their moments; diagonal moments follow moments.py's rule
    (exact for self fusion).

    Self fusion's two halves are copies that receive the same gradients, so they stay copies under training.
    `noise` > 0 breaks that as net2net's does: zero-sum noise over each unit's two copies on every tensor that
    reads them (off-diagonal blocks included), exact because both copies carry the same activations. Two
    different models have no copies, so there it is refused."""
    expected = replace(cfg, **{f: 2 * getattr(cfg, f) for f in GROWN_FIELDS["width"]})
    for f in fields(ModelConfig):
        if getattr(target, f.name) != getattr(expected, f.name):
            raise GrowthError(f"fusion builds model.{f.name}={getattr(expected, f.name)} (twice the source's "
                              f"{getattr(cfg, f.name)}); the target has {getattr(target, f.name)}")
    if other_state is not None:
        check_state(cfg, other_state, "other_state")
    if noise < 0 or (noise > 0 and other_state is not None):
        raise GrowthError(f"fusion noise={noise}: symmetry-breaking noise must be >= 0 and applies to self fusion "
                          "only (two different models' halves are no copies of each other)")
    opt_states = None
    if opt_state is not None and other_state is None:
        opt_states = [opt_state, opt_state]
    elif opt_state is not None:
        if other_opt_state is None:
            raise GrowthError("fusion of two models with opt_state also needs other_opt_state (the second "
                              "model's moments)")
        check_opt_state(other_state, other_opt_state, "other_opt_state")
        for name, entries in opt_state.items():
            if other_opt_state.get(name, {}).keys() != entries.keys():
                raise GrowthError(f"opt_state and other_opt_state differ for {name!r}: "
                                  f"{sorted(entries)} vs {sorted(other_opt_state.get(name, {}))}")
        opt_states = [opt_state, other_opt_state]
    sizes = {"resid": target.dim, "q": target.n_heads * cfg.head_width, "kv": target.n_kv_heads * cfg.head_width,
             "ffn": target.ffn_dim}
    counts = {s: torch.full((n,), 2.0) for s, n in sizes.items()} | {"vocab": torch.ones(cfg.vocab_size)}

    def fuse(a: Tensor, b: Tensor, axes: tuple[str, ...]) -> Tensor:
        widened = [axis for axis, space in enumerate(axes) if space != "vocab"]
        return torch.block_diag(a, b) if len(widened) == 2 else torch.cat([a, b], dim=widened[0])

    self_fusion = other_state is None
    record = {"function_preserving": True if self_fusion else "approximate",
              "sources": "self" if self_fusion else "two models",
              "layout": "every widened axis: first model's units, then the second's; block-diagonal weights; "
                        "logits = mean of the two heads' (1/2 folded into the final norm gain)",
              "symmetry_noise": noise}
    result = _build(target, [state, state if self_fusion else other_state], opt_states, fuse, counts,
                    split_reads=lambda p: p.writes == "vocab", record=record)
    if noise > 0:
        copies = {space: torch.arange(n) % (n // 2) for space, n in sizes.items()}  # unit i and i + n/2 are copies
        _break_symmetry(result.state_dict, target, copies, noise, seed)
    return result


def _channels(heads: Tensor, head_dim: int) -> Tensor:
    """Channel indices of the given heads, in order: head h -> h*head_dim ... h*head_dim + head_dim - 1."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _build(target: ModelConfig, states: list[StateDict], opt_states: list[OptState] | None,
           transform: Callable[..., Tensor], counts: dict[str, Tensor], split_reads: Callable[[_Param], bool],
           record: dict) -> GrowthResult:
    """Map every parameter (and its moments) with `transform(*source_tensors, axes)` and the split factors.

    split_reads(p): whether parameter p sums over several copies of its input units (always for Net2Net; for
    fusion only the head, which reads both halves)."""
    new_state: StateDict = {}
    new_opt: OptState | None = None if opt_states is None else {}
    for name in states[0]:
        suffix = name.split(".", 2)[-1] if name.startswith("layers.") else name
        param = _PARAMS[suffix]
        weight_scale = _along(counts[param.reads], param.axes.index(param.reads), len(param.axes)).reciprocal() \
            if param.reads is not None and split_reads(param) else 1.0
        grad_scale = _along(counts[param.writes], param.axes.index(param.writes), len(param.axes)).reciprocal()
        if suffix in _FOLDED:
            weight_scale, grad_scale = grad_scale, weight_scale

        def mapped(*tensors: Tensor, axes: tuple[str, ...] = param.axes) -> Tensor:
            return transform(*tensors, axes)

        weight = mapped(*(s[name] for s in states))
        new_state[name] = (weight * weight_scale).to(weight.dtype)
        if new_opt is not None and name in opt_states[0]:
            new_opt[name] = map_moments([o[name] for o in opt_states], mapped, grad_scale)
    if target.tie_embeddings:
        new_state["output.weight"] = new_state["tok_embeddings.weight"]
    return GrowthResult(target, new_state, new_opt, record)


def _along(vector: Tensor, axis: int, ndim: int) -> Tensor:
    """`vector` shaped to broadcast along `axis` of an ndim-dimensional tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return vector.view(shape)
