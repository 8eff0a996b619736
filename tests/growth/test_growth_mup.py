"""Width growth keeps a µP model a µP model: the grown config carries the source's model.mup (so its hidden lrs
and readout multiplier follow the new width), the function is preserved, and the final norm's moments follow its
gradient."""
from __future__ import annotations

import pytest
import torch
from growth_testlib import TINY, TOL, fused, grads_as_moments, load, max_diff, random_model, state_of, tiny

import growth
from model.config import MupConfig
from model.mup import readout_multiplier

MUP = MupConfig(base_width=16)
TOKENS = torch.randint(0, TINY.vocab_size, (3, TINY.max_seq_len), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("op", ["net2net", "fusion"])
def test_width_growth_of_a_mup_model_preserves_its_function(op, tied):
    source = tiny(tie_embeddings=tied, mup=MUP)
    target = fused(source)  # dim 32 -> 64: net2net's x2 duplication, or self fusion
    small = random_model(source)
    result = growth.grow(source, state_of(small), op, target)
    assert result.config.mup == MUP
    assert readout_multiplier(result.config) == readout_multiplier(source) / 2  # the logits' factor halved...
    assert max_diff(small, load(result), TOKENS) < TOL  # ...and the function did not change


def test_without_the_fold_the_grown_mup_model_would_halve_its_logits():
    """The control: the same growth of the same weights without µP ends at other weights, and those weights under
    the grown µP config give half the logits, so preservation above is the fold's doing."""
    source = tiny(mup=MUP)
    small = random_model(source)
    standard = growth.grow(tiny(), state_of(small), "net2net", fused(tiny()))
    grown = growth.grow(source, state_of(small), "net2net", fused(source))
    assert torch.allclose(grown.state_dict["norm.weight"], 2 * standard.state_dict["norm.weight"])
    standard.config = grown.config
    with torch.no_grad():
        half, full = load(standard)(TOKENS).logits, small(TOKENS).logits
    torch.testing.assert_close(half, full / 2, rtol=1e-4, atol=1e-5)


def test_a_target_without_the_sources_mup_is_refused():
    source = tiny(mup=MUP)
    with pytest.raises(growth.GrowthError, match=r"keeps model\.mup"):
        growth.grow(source, state_of(random_model(source)), "net2net", fused(tiny()))


def test_grown_mup_moments_equal_the_grown_models_gradients():
    source = tiny(mup=MUP)
    small = random_model(source)
    _, opt = grads_as_moments(small, TOKENS)
    result = growth.grow(source, state_of(small), "net2net", fused(source), opt_state=opt)
    grads, _ = grads_as_moments(load(result), TOKENS)
    for name in ("norm.weight", "output.weight", "layers.1.attention.wq.weight"):
        torch.testing.assert_close(result.opt_state[name]["exp_avg"], grads[name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(result.opt_state[name]["exp_avg_sq"], grads[name] ** 2, rtol=1e-4, atol=1e-7,
                                   msg=name)
