"""Adam moments follow the documented rule (growth/operators/moments.py): mapped as the gradients map.

Each test puts the small model's own gradient on one batch into exp_avg (its square into exp_avg_sq); where the
operator preserves the function, the grown model's gradient on that batch is what the rule must produce."""
from __future__ import annotations

import pytest
import torch
from growth_testlib import NET2NET, TINY, fused, grads_as_moments, load, random_model, tiny, tokens  # noqa: F401 (fixture)

import growth


def assert_moments_are_gradients(opt_state, grads, mask=lambda name, t: torch.ones_like(t, dtype=torch.bool)):
    assert opt_state.keys() == grads.keys()
    for name, g in grads.items():
        keep = mask(name, g)
        m, v = opt_state[name]["exp_avg"], opt_state[name]["exp_avg_sq"]
        assert m.shape == g.shape, name
        torch.testing.assert_close(m[keep], g[keep], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(v[keep], (g * g)[keep], rtol=1e-4, atol=1e-7, msg=name)
        assert opt_state[name]["step"].item() == 7.0


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("case", NET2NET)
def test_net2net_moments_equal_the_grown_models_gradients(case, tied, tokens):
    source_kw, target_kw = NET2NET[case]
    source = tiny(tie_embeddings=tied, **source_kw)
    small = random_model(source)
    _, opt = grads_as_moments(small, tokens)
    result = growth.grow(source, small.state_dict(), "net2net", tiny(tie_embeddings=tied, **source_kw | target_kw),
                         opt_state=opt)
    grown_grads, _ = grads_as_moments(load(result), tokens)
    assert_moments_are_gradients(result.opt_state, grown_grads)


def test_self_fusion_moments_follow_gradients_on_the_diagonal_and_start_at_zero_off_it(tokens):
    small = random_model(TINY)
    _, opt = grads_as_moments(small, tokens)
    result = growth.grow(TINY, small.state_dict(), "fusion", fused(TINY), opt_state=opt)
    grown_grads, _ = grads_as_moments(load(result), tokens)

    def diagonal(name, t):  # both axes widened (every block matrix): only the two diagonal blocks
        if t.dim() == 2 and "embeddings" not in name and name != "output.weight":
            r, c = t.shape[0] // 2, t.shape[1] // 2
            return torch.block_diag(torch.ones(r, c), torch.ones(r, c)).bool()
        return torch.ones_like(t, dtype=torch.bool)

    assert_moments_are_gradients(result.opt_state, grown_grads, diagonal)
    wq_m, wq_g = result.opt_state["layers.0.attention.wq.weight"]["exp_avg"], grown_grads["layers.0.attention.wq.weight"]
    off = ~diagonal("layers.0.attention.wq.weight", wq_g)
    assert not wq_m[off].any() and wq_g[off].abs().max() > 0  # a choice: the true off-diagonal gradient is not 0


def test_zero_block_keeps_source_gradients_and_gives_new_blocks_fresh_moments(tokens):
    small = random_model(TINY)
    _, opt = grads_as_moments(small, tokens)
    result = growth.grow(TINY, small.state_dict(), "zero_block", tiny(n_layers=3), opt_state=opt)
    grown_grads, _ = grads_as_moments(load(result), tokens)
    old = {n: g for n, g in grown_grads.items() if not n.startswith("layers.2.")}
    assert_moments_are_gradients({n: result.opt_state[n] for n in old}, old)
    new = [n for n in result.opt_state if n.startswith("layers.2.")]
    assert len(new) == 9 and all(not t.any() for n in new for t in result.opt_state[n].values())


@pytest.mark.parametrize("op, n_layers", [("stack", 4), ("interleave", 4), ("stack_top", 3)])
def test_copied_layers_copy_their_moments(op, n_layers, tokens):
    small = random_model(TINY)
    _, opt = grads_as_moments(small, tokens)
    result = growth.grow(TINY, small.state_dict(), op, tiny(n_layers=n_layers), opt_state=opt)
    for i, src in enumerate(result.record["layer_map"]):
        m = result.opt_state[f"layers.{i}.attention.wq.weight"]["exp_avg"]
        assert torch.equal(m, opt[f"layers.{src}.attention.wq.weight"]["exp_avg"])


def test_fusing_two_models_with_moments_needs_both_moment_sets(tokens):
    a, b = random_model(TINY, seed=0), random_model(TINY, seed=1)
    _, opt = grads_as_moments(a, tokens)
    with pytest.raises(growth.GrowthError, match="needs other_opt_state"):
        growth.grow(TINY, a.state_dict(), "fusion", fused(TINY), opt_state=opt, other_state=b.state_dict())
