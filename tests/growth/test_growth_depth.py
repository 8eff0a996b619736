"""Depth operators: the layer map is what each operator claims; only zero_block preserves the function."""
from __future__ import annotations

import pytest
import torch
from growth_testlib import TOL, load, max_diff, random_model, state_of, tiny, tokens  # noqa: F401 (fixture)

import growth

SOURCE = tiny(n_layers=4)
COPYING = [  # operator, params, target n_layers, the map it must produce (target layer i <- source layer)
    ("stack", {}, 6, [0, 1, 2, 3, 0, 1]),
    ("stack_top", {}, 6, [0, 1, 2, 3, 2, 3]),
    ("stack_middle", {}, 6, [0, 1, 2, 1, 2, 3]),
    ("stack_middle", {"block": 1}, 6, [0, 1, 1, 1, 2, 3]),
    ("interleave", {}, 8, [0, 0, 1, 1, 2, 2, 3, 3]),
]


@pytest.mark.parametrize("op, params, n_layers, layer_map", COPYING)
def test_copying_operators_map_layers_as_claimed_and_change_the_function(op, params, n_layers, layer_map, tokens):
    small = random_model(SOURCE)
    state = state_of(small)
    result = growth.grow(SOURCE, state, op, tiny(n_layers=n_layers), **params)
    assert result.record["layer_map"] == layer_map
    assert result.record["function_preserving"] is False
    for key, value in result.state_dict.items():
        parts = key.split(".", 2)
        source_key = f"layers.{layer_map[int(parts[1])]}.{parts[2]}" if parts[0] == "layers" else key
        assert torch.equal(value, state[source_key]), key
    # The point LAG makes: these are good growths although the grown model computes something else at step 0.
    assert max_diff(small, load(result), tokens) > 1e-2


@pytest.mark.parametrize("position, layer_map", [("top", [0, 1, 2, 3, None, None, None]),
                                                 ("interleave", [0, 1, None, 2, None, 3, None])])
@pytest.mark.parametrize("tied", [False, True])
def test_zero_block_preserves_the_function_exactly(position, layer_map, tied, tokens):
    source = tiny(n_layers=4, tie_embeddings=tied)
    small = random_model(source)
    result = growth.grow(source, state_of(small), "zero_block", tiny(n_layers=7, tie_embeddings=tied),
                         position=position, seed=3)
    assert result.record["layer_map"] == layer_map
    assert result.record["function_preserving"] is True
    assert max_diff(small, load(result), tokens) < TOL
    new = [i for i, s in enumerate(layer_map) if s is None]
    for i in new:
        assert not result.state_dict[f"layers.{i}.attention.wo.weight"].any()
        assert not result.state_dict[f"layers.{i}.feed_forward.w2.weight"].any()
        assert result.state_dict[f"layers.{i}.attention.wq.weight"].std() > 0.5 * source.init_std  # fresh, learnable


def test_zero_block_init_is_seeded_and_leaves_the_global_rng_alone():
    state, target = state_of(random_model(tiny())), tiny(n_layers=3)
    rng = torch.get_rng_state()
    a, b, c = (growth.grow(tiny(), state, "zero_block", target, seed=s).state_dict for s in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a["layers.2.attention.wq.weight"], b["layers.2.attention.wq.weight"])
    assert not torch.equal(a["layers.2.attention.wq.weight"], c["layers.2.attention.wq.weight"])


def test_tied_copies_stay_one_tensor():
    source = tiny(tie_embeddings=True)
    result = growth.grow(source, state_of(random_model(source)), "stack", tiny(n_layers=4, tie_embeddings=True))
    assert result.state_dict["output.weight"] is result.state_dict["tok_embeddings.weight"]


@pytest.mark.parametrize("op, params, n_layers, match", [
    ("interleave", {}, 6, r"n_layers=6 to be a multiple of the source's 4"),
    ("stack_top", {}, 9, r"top k = .* 5 layers, but the source has only model.n_layers=4"),
    ("stack_middle", {"block": 3}, 6, r"block=3 must be an integer in \[1, source n_layers=4\] and divide .* 2"),
    ("stack_middle", {"block": "x"}, 6, r"block='x' must be an integer in \[1, source n_layers=4\]"),
    ("zero_block", {"position": "bottom"}, 6, r"position='bottom'"),
])
def test_bad_depth_requests_name_the_value(op, params, n_layers, match):
    with pytest.raises(growth.GrowthError, match=match):
        growth.grow(SOURCE, state_of(random_model(SOURCE)), op, tiny(n_layers=n_layers), **params)
