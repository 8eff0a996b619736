"""The operator registry and the input checks every operator shares."""
from __future__ import annotations

import pytest
from growth_testlib import TINY, random_model, state_of, tiny

import growth
from growth.operators import register_operator

DEPTH = ["interleave", "stack", "stack_middle", "stack_top", "zero_block"]
WIDTH = ["fusion", "net2net"]


def test_every_operator_is_registered_with_its_kind():
    assert growth.available_operators("depth") == DEPTH
    assert growth.available_operators("width") == WIDTH
    assert growth.available_operators() == sorted(DEPTH + WIDTH)


def test_unknown_operator_names_it_and_lists_the_registered_ones():
    with pytest.raises(growth.GrowthError, match=r"'grow_sideways'.*interleave, net2net, stack"):
        growth.get_operator("grow_sideways")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="'stack' is already registered"):
        register_operator("stack", kind="depth")(lambda *a, **k: None)


def test_the_record_names_operator_and_kind():
    result = growth.grow(TINY, state_of(random_model(TINY)), "stack", tiny(n_layers=4))
    assert (result.record["operator"], result.record["kind"]) == ("stack", "depth")


@pytest.mark.parametrize("op, target, match", [
    ("stack", tiny(n_layers=1), r"n_layers=1 is smaller than the source's 2"),
    ("net2net", tiny(ffn_dim=32), r"ffn_dim=32 is smaller than the source's 48"),
    ("net2net", tiny(dim=64), r"head_dim.*source head_dim=8.*64/4=16.*n_heads=8"),
    ("net2net", tiny(vocab_size=128), r"keeps model.vocab_size: source 64, target 128"),
    ("stack", tiny(n_layers=4, dim=64, n_heads=8), r"depth operator 'stack' keeps model.dim: source 32, target 64"),
])
def test_bad_targets_name_the_field_and_both_values(op, target, match):
    with pytest.raises(growth.GrowthError, match=match):
        growth.grow(TINY, state_of(random_model(TINY)), op, target)


def test_a_state_that_does_not_match_its_config_is_refused():
    state = state_of(random_model(TINY))
    del state["layers.1.ffn_norm.weight"]
    with pytest.raises(growth.GrowthError, match=r"missing \['layers.1.ffn_norm.weight'\]"):
        growth.grow(TINY, state, "stack", tiny(n_layers=4))


def test_optimizer_tensors_must_be_shaped_like_their_parameter():
    state = state_of(random_model(TINY))
    opt = {"norm.weight": {"exp_avg": state["norm.weight"][:5]}}
    with pytest.raises(growth.GrowthError, match=r"\['norm.weight'\]\['exp_avg'\] has shape \(5,\)"):
        growth.grow(TINY, state, "stack", tiny(n_layers=4), opt_state=opt)
