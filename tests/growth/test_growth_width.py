"""Width operators: Net2Net and self fusion preserve the function exactly; fusing two models approximates."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from growth_testlib import (NET2NET, TINY, TOL, fused, grads_as_moments, load, logits, max_diff,  # noqa: F401
                            random_model, state_of, tiny, tokens)  # tokens: a fixture

import growth


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("case", NET2NET)
def test_net2net_preserves_the_function(case, tied, tokens):
    source_kw, target_kw = NET2NET[case]
    source = tiny(tie_embeddings=tied, **source_kw)
    small = random_model(source)
    result = growth.grow(source, state_of(small), "net2net", tiny(tie_embeddings=tied, **source_kw | target_kw))
    assert result.record["function_preserving"] is True
    assert max_diff(small, load(result), tokens) < TOL


def test_net2net_copies_each_query_head_with_its_own_kv_group():
    result = growth.grow(TINY, state_of(random_model(TINY)), "net2net", tiny(dim=64, n_heads=8, n_kv_heads=4))
    q, kv = result.record["units"]["q_heads"], result.record["units"]["kv_heads"]
    src_rep, new_rep = TINY.n_heads // TINY.n_kv_heads, result.config.n_heads // result.config.n_kv_heads
    assert sorted(q) == sorted(list(range(TINY.n_heads)) * 2)  # every source head exactly twice
    assert all(kv[i // new_rep] == q[i] // src_rep for i in range(len(q)))


@pytest.mark.parametrize("target, match", [
    (tiny(dim=48, n_heads=6), r"integer factor.*source 32, target 48"),
    (tiny(dim=64, n_heads=8, n_kv_heads=8), r"n_kv_heads=8 must be .* valid: \[2, 4\]"),
])
def test_net2net_refuses_what_it_cannot_preserve(target, match):
    with pytest.raises(growth.GrowthError, match=match):
        growth.grow(TINY, state_of(random_model(TINY)), "net2net", target)


@pytest.mark.parametrize("tied", [False, True])
def test_self_fusion_preserves_the_function(tied, tokens):
    source = tiny(tie_embeddings=tied)
    small = random_model(source)
    result = growth.grow(source, state_of(small), "fusion", fused(source))
    assert result.record["function_preserving"] is True
    assert max_diff(small, load(result), tokens) < TOL


def test_fusion_is_block_diagonal_and_exact_when_both_streams_agree(tokens):
    """B = A with its FFN units permuted: different tensors, same residual streams, so RMSNorm mixes nothing and
    the fused model must reproduce A exactly -- which holds only if each half computes its own model."""
    a = random_model(TINY)
    state_a = state_of(a)
    state_b = dict(state_a)
    perm = torch.randperm(TINY.ffn_dim, generator=torch.Generator().manual_seed(5))
    for i in range(TINY.n_layers):
        for w in ("w1", "w3"):
            state_b[f"layers.{i}.feed_forward.{w}.weight"] = state_a[f"layers.{i}.feed_forward.{w}.weight"][perm]
        state_b[f"layers.{i}.feed_forward.w2.weight"] = state_a[f"layers.{i}.feed_forward.w2.weight"][:, perm]
    result = growth.grow(TINY, state_a, "fusion", fused(TINY), other_state=state_b)
    wq = result.state_dict["layers.0.attention.wq.weight"]
    assert not wq[:32, 32:].any() and not wq[32:, :32].any()
    assert max_diff(a, load(result), tokens) < TOL


def test_fusing_two_different_models_approximates_their_average(tokens):
    a, b = random_model(TINY, seed=0), random_model(TINY, seed=1)
    result = growth.grow(TINY, state_of(a), "fusion", fused(TINY), other_state=state_of(b))
    assert result.record["function_preserving"] == "approximate"
    average = (logits(a, tokens) + logits(b, tokens)) / 2
    error = (logits(load(result), tokens) - average).abs()
    print(f"fusion of two different models: max |logit - average| = {error.max():.4f}, mean {error.mean():.4f}, "
          f"logit scale {average.abs().mean():.4f}")
    # Not exact (RMSNorm over the concatenated stream mixes the two models' RMS), but a bounded perturbation.
    assert TOL < error.max().item() < average.abs().max().item()


@pytest.mark.parametrize("target, other, match", [
    (tiny(dim=64, n_heads=8, n_kv_heads=4, ffn_dim=80), None, r"fusion builds model.ffn_dim=96 .* has 80"),
    (fused(TINY), tiny(ffn_dim=40), r"other_state\['layers.0.feed_forward.w1.weight'\] has shape \(40, 32\)"),
])
def test_bad_fusion_requests_name_the_field(target, other, match):
    other_state = state_of(random_model(other)) if other is not None else None
    with pytest.raises(growth.GrowthError, match=match):
        growth.grow(TINY, state_of(random_model(TINY)), "fusion", target, other_state=other_state)


@pytest.mark.parametrize("width_op", ["net2net", "fusion"])
def test_width_then_depth_chains_and_preserves(width_op, tokens):
    small = random_model(TINY)
    wide = growth.grow(TINY, state_of(small), width_op, fused(TINY))
    deep = growth.grow(wide.config, wide.state_dict, "zero_block", replace(wide.config, n_layers=3))
    assert deep.config.dim == 64 and deep.config.n_layers == 3
    assert max_diff(small, load(deep), tokens) < TOL


def test_self_fusion_noise_breaks_the_symmetry_and_keeps_the_function(tokens):
    source = tiny(tie_embeddings=False)
    small = random_model(source)
    plain = load(growth.grow(source, state_of(small), "fusion", fused(source)))
    result = growth.grow(source, state_of(small), "fusion", fused(source), noise=0.1, seed=1)
    noisy = load(result)
    assert result.record["symmetry_noise"] == 0.1
    error = max_diff(small, noisy, tokens)
    assert error < 10 * TOL, f"zero-sum noise changed the logits by {error}"
    # the two copies of ffn unit 5 (rows 5 and 5 + ffn_dim of w1) get the same gradient without noise, not with it
    (same, _), (broken, _) = grads_as_moments(plain, tokens), grads_as_moments(noisy, tokens)
    w1, f = "layers.0.feed_forward.w1.weight", source.ffn_dim
    scale = broken[w1][5].abs().max()
    assert (same[w1][5] - same[w1][5 + f]).abs().max() < 1e-5 * scale
    assert (broken[w1][5] - broken[w1][5 + f]).abs().max() > 1e-3 * scale
    with pytest.raises(growth.GrowthError, match="self fusion only"):
        growth.grow(source, state_of(small), "fusion", fused(source), other_state=state_of(random_model(source)),
                    noise=0.1)


@pytest.mark.numerics
@pytest.mark.parametrize("tied", [False, True])
def test_net2net_noise_breaks_the_symmetry_and_keeps_the_function(tied, tokens):
    source = tiny(tie_embeddings=tied)
    small = random_model(source)
    target = tiny(dim=64, n_heads=8, ffn_dim=80, tie_embeddings=tied)  # ffn 48 -> 80: uneven copy counts
    plain = load(growth.grow(source, state_of(small), "net2net", target))
    result = growth.grow(source, state_of(small), "net2net", target, noise=0.1, seed=1)
    noisy = load(result)
    assert result.record["symmetry_noise"] == 0.1
    error = max_diff(small, noisy, tokens)
    assert error < 10 * TOL, f"zero-sum noise changed the logits by {error}"
    w1, w2 = noisy.layers[0].feed_forward.w1.weight, noisy.layers[0].feed_forward.w2.weight
    # residual unit 3 and its copy 35 read by w1 (columns), ffn unit 5 and its copy 53 read by w2
    assert not torch.equal(w1[:, 3], w1[:, 35]) and not torch.equal(w2[:, 5], w2[:, 53])
    assert torch.allclose(w2[:, 5] + w2[:, 53], plain.layers[0].feed_forward.w2.weight[:, [5, 53]].sum(1), atol=1e-6)
    # the copies of ffn unit 5 now receive different gradients (without noise they are identical)
    (same, _), (broken, _) = grads_as_moments(plain, tokens), grads_as_moments(noisy, tokens)
    name = "layers.0.feed_forward.w1.weight"
    assert torch.equal(same[name][5], same[name][53])
    assert (broken[name][5] - broken[name][53]).abs().max() > 1e-3 * broken[name][5].abs().max()
    assert torch.equal(noisy.output.weight, noisy.tok_embeddings.weight) == tied
