"""The under-optimized verdict: a block refitted on the LM loss (everything else frozen) against the model's own
held-out loss, with a margin from the refits' seed spread (pretrain/probes/peeling/refit.py).

The synthetic case where a refit must beat the model: a tiny Llama trained on the Markov source of
test_peeling.py, then block REINIT put back to a fresh initialization. The other blocks were trained with a
working block there, so the model's loss is worse than what the block could do; nothing else changed.
"""
from __future__ import annotations

import copy

import pytest
import torch
from scipy import stats

from model import Llama
from pretrain.probes.peeling.bounds import compute_bounds
from pretrain.probes.peeling.refit import gain_lower_bound
from pretrain.probes.peeling.settings import PeelingError, PeelingSettings, check_settings
from tests.jobs.test_peeling import CFG, markov_windows, train_on_markov

REINIT = 3
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]  # verdicts of models trained here


@pytest.fixture(scope="module")
def trained(one_thread) -> Llama:
    torch.manual_seed(0)
    model = Llama(CFG)
    assert train_on_markov(model) < 1.6, "the fixture model did not learn; the verdict is moot"
    return model.eval()


def peel(model: Llama):
    settings = PeelingSettings(offsets=[1], permutations=["forward"], batch_windows=16, refit_seeds=3)
    before = copy.deepcopy(model.state_dict())
    out = compute_bounds(model, markov_windows(16, seed=3), settings, holdout=markov_windows(16, seed=4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a refit moved the model"
    return out


@pytest.fixture(scope="module")
def intact(trained):
    return peel(trained)


@pytest.fixture(scope="module")
def bounds(trained):
    model = copy.deepcopy(trained)
    torch.manual_seed(1)
    model.layers[REINIT - 1].load_state_dict(Llama(CFG).layers[REINIT - 1].state_dict())
    return peel(model)


def test_a_trained_model_has_no_under_optimized_layer(intact):
    assert intact.under_optimized_layers == [], intact.layers
    assert all(v.refit_margin <= intact.settings.tolerance for v in intact.layers)


def test_a_block_put_back_to_init_is_under_optimized(bounds, intact):
    assert REINIT in bounds.under_optimized_layers, bounds.layers
    # The refits find the damage, but not only at its source: a neighbour's refit compensates for it too (the
    # verdict says "this block could lower the loss", not "this block is the broken one": docs/methods.md §3).
    gains, before = ({v.layer: v.refit_gain for v in b.layers} for b in (bounds, intact))
    assert all(gains[l] > before[l] for l in (REINIT - 1, REINIT)), (gains, before)


def test_every_layer_is_refitted_per_seed_and_scored_held_out(bounds):
    assert sorted(r.layer for r in bounds.refits) == [1, 2, 3, 4]
    assert all(len(r.gains) == bounds.settings.refit_seeds for r in bounds.refits)
    assert all(len(set(r.gains)) == len(r.gains) for r in bounds.refits), "seeds must see different resamples"
    assert bounds.to_json()["under_optimized_layers"] == bounds.under_optimized_layers


@pytest.mark.parametrize("gains", [[0.10, 0.12, 0.08], [0.01, -0.02, 0.03, 0.00, 0.02], [1.0, 1.5]])
def test_the_gain_bound_is_the_one_sided_95_percent_t_bound(gains):
    # a two-sided 90% interval's lower end is the one-sided 95% bound
    lower, _ = stats.t.interval(0.90, len(gains) - 1, loc=sum(gains) / len(gains), scale=stats.sem(gains))
    assert gain_lower_bound(gains) == pytest.approx(lower, rel=1e-12)


def test_one_refit_has_no_spread_to_measure_against():
    with pytest.raises(PeelingError, match="refit_seeds=1"):
        check_settings(PeelingSettings(refit_seeds=1))
    with pytest.raises(ValueError, match="two refits"):
        gain_lower_bound([0.3])
