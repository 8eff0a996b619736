"""Peeling bounds, the pure core: lazy-layer detection, local optima, low-bit levels, the lstsq solver.

One tiny Llama is trained in-process (plain torch AdamW, fp32) on a synthetic second-order Markov source
while block LAZY is held at the identity (wo and w2 zeroed and frozen): an under-optimized layer to detect.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from model import Llama, ModelConfig
from pretrain.probes.peeling.bounds import compute_bounds, lm_loss_from, record
from pretrain.probes.peeling.fit import fit_block
from pretrain.probes.peeling.plan import plan
from pretrain.probes.peeling.settings import PeelingError, PeelingSettings, check_settings, parse_variant

VOCAB, SEQ, LAZY = 32, 32, 2
CFG = ModelConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=VOCAB, max_seq_len=SEQ)
TABLE = torch.randint(0, VOCAB, (VOCAB, VOCAB), generator=torch.Generator().manual_seed(0))


def markov_windows(n: int, seed: int) -> torch.Tensor:
    """[n, SEQ + 1] tokens: each is TABLE[previous two] with probability 0.9, else uniform (needs attention)."""
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, VOCAB, (n, SEQ + 1), generator=g)
    keep = torch.rand(n, SEQ + 1, generator=g) < 0.9
    for t in range(2, SEQ + 1):
        toks[:, t] = torch.where(keep[:, t], TABLE[toks[:, t - 2], toks[:, t - 1]], toks[:, t])
    return toks


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]  # verdicts of models trained here


def train_on_markov(model: Llama, steps: int = 200) -> float:
    """Plain AdamW (fp32) on the Markov source, the parameters that require grad, its learning rate decayed linearly
    to zero as a pretraining schedule ends; returns the last batch's loss.

    The decay is what makes the model "trained" for the under-optimized verdict (test_peeling_refit.py): at a
    constant rate the last iterate still sits in the noise of its steps, a refit of any block gains ~0.005 nats,
    and whether that clears the tolerance depended on the CPU's kernels. Decayed, every refit loses >= 0.015."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=steps)
    data, gen = markov_windows(2048, seed=1), torch.Generator().manual_seed(2)
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (32,), generator=gen)]
        loss = F.cross_entropy(model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return loss.item()


@pytest.fixture(scope="module")
def lazy_model(one_thread) -> Llama:
    torch.manual_seed(0)
    model = Llama(CFG)
    lazy = model.layers[LAZY - 1]
    for linear in (lazy.attention.wo, lazy.feed_forward.w2):
        linear.weight.data.zero_()
        linear.weight.requires_grad_(False)
    loss = train_on_markov(model)
    assert loss < 1.6, f"the fixture model did not learn (loss {loss:.3f}); detection is moot"
    return model.eval()


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return markov_windows(16, seed=3)


def test_lazy_layer_is_flagged_with_the_largest_margin(lazy_model, calib):
    s = PeelingSettings(variants=["fp"], permutations=["forward", "backward"], steps=30, batch_windows=16)
    bounds = compute_bounds(lazy_model, calib, s)
    margins = {v.layer: v.margin for v in bounds.layers}
    assert LAZY in bounds.lazy_layers, bounds.layers
    assert max(margins, key=margins.get) == LAZY, margins
    assert len(bounds.lazy_layers) < CFG.n_layers, "every layer flagged: the bound does not discriminate"
    lazy = next(v for v in bounds.layers if v.layer == LAZY)
    assert abs(lazy.removal_bound - bounds.model_loss) < 1e-4  # block LAZY-1 already maps X_{LAZY-2} -> X_LAZY


@pytest.mark.parametrize("solver", ["adam", "lstsq"])
def test_block_at_its_own_optimum_reproduces_the_model_loss(lazy_model, calib, solver):
    # Target X_l is what block l itself produces: its own weights are an exact optimum of the MSE.
    s = PeelingSettings(offsets=[0], permutations=["forward"], variants=["fp"], solver=solver, steps=10)
    bounds = compute_bounds(lazy_model, calib, s)
    assert [r.layer for r in bounds.rows] == [1, 2, 3, 4]
    for row in bounds.rows:
        assert row.fit_mse < 1e-8, row
        assert abs(row.bound - bounds.model_loss) < 1e-4, row


def test_tail_loss_equals_a_spliced_copy(lazy_model, calib):
    """Running replacement blocks from the recorded X_{l-1} is the loss of a spliced copy of the model."""
    rec = record(lazy_model, calib, batch_windows=5)
    swapped = [lazy_model.layers[3], lazy_model.layers[2]]  # blocks 3 and 4 in swapped order
    tail = lm_loss_from(lazy_model, rec.hidden[2], swapped, rec, batch_windows=16)
    spliced = copy.deepcopy(lazy_model)
    spliced.layers = torch.nn.ModuleList([*spliced.layers[:2], *copy.deepcopy(swapped)])
    with torch.no_grad():
        logits = spliced(calib[:, :-1]).logits
    full = F.cross_entropy(logits.flatten(0, 1), calib[:, 1:].flatten()).item()
    assert tail == pytest.approx(full, abs=1e-5)
    assert tail > lm_loss_from(lazy_model, rec.hidden[0], list(lazy_model.layers), rec, 16) + 0.01


@pytest.mark.parametrize("variant", ["binary", "3bit"])
def test_low_bit_fits_have_the_promised_levels(lazy_model, calib, variant):
    rec = record(lazy_model, calib, batch_windows=16)
    bits = parse_variant(variant)
    s = PeelingSettings(steps=15, lr=3e-3)
    fit = fit_block(lazy_model.layers[2], rec.hidden[2], rec.hidden[3], rec.rope, bits, s)
    assert fit.mse < fit.init_mse  # gradients reach the latent weights through the straight-through estimator
    linears = [m for m in fit.block.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 7
    for linear in linears:
        levels = [len(torch.unique(row)) for row in linear.weight]
        if bits == 1:
            assert set(levels) == {2}, linear
        else:
            assert max(levels) <= 2 ** bits and max(levels) > 2, (linear, levels)
    assert lazy_model.layers[2].attention.wq.weight.unique().numel() > 1000  # the source block is untouched


def test_lstsq_recovers_noisy_output_projections(lazy_model, calib):
    rec = record(lazy_model, calib, batch_windows=16)
    noisy = copy.deepcopy(lazy_model.layers[2])
    torch.manual_seed(5)
    for linear in (noisy.attention.wo, noisy.feed_forward.w2):
        linear.weight.data = torch.randn_like(linear.weight) * linear.weight.std()
    s = PeelingSettings(solver="lstsq", lstsq_rounds=3)
    fit = fit_block(noisy, rec.hidden[2], rec.hidden[3], rec.rope, None, s)
    assert fit.init_mse > 1e-2
    assert fit.mse < 1e-3 * fit.init_mse, (fit.mse, fit.init_mse)


def test_plan_roles_and_removals():
    rows = {(p.layer, p.offset, p.permutation): p for p in plan([2], [0, 1], ["forward", "backward", "swap"], 4)}
    assert sorted(rows) == [(2, 0, "forward"), (2, 1, "backward"), (2, 1, "forward"), (2, 1, "swap")]
    assert rows[(2, 1, "forward")].removed == [3]
    assert rows[(2, 1, "backward")].removed == [2]
    swap = rows[(2, 1, "swap")]
    assert [(f.source, f.input, f.target) for f in swap.fits] == [(3, 1, 2), (2, 2, 3)] and swap.removed == []
    assert plan([4], [1], ["forward"], 4) == []  # past the last block


@pytest.mark.parametrize("change, message", [
    ({"variants": ["1bit"]}, "variant '1bit'"), ({"layers": [5]}, "layers=[5]"), ({"solver": "sgd"}, "solver"),
    ({"permutations": ["rotate"]}, "permutations"), ({"init": "fresh"}, "backward"),
    ({"offsets": [9]}, "offsets=[9] and permutations=['forward', 'backward'] peel nothing in a 4-layer model"),
])
def test_bad_settings_are_refused_by_name(change, message):
    with pytest.raises(PeelingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_settings(PeelingSettings(**change), n_layers=4)


def test_held_out_scoring_decides_the_verdicts(lazy_model, calib):
    """Rows fitted on the calibration windows are scored again on other windows, and only those scores flag."""
    s = PeelingSettings(variants=["fp"], permutations=["forward"], steps=30, batch_windows=16)
    holdout = markov_windows(16, seed=4)
    bounds = compute_bounds(lazy_model, calib, s, holdout=holdout)
    assert bounds.scored_on == "held-out" and all(r.holdout_bound is not None for r in bounds.rows)
    rec = record(lazy_model, holdout, batch_windows=16)
    assert bounds.holdout_model_loss == pytest.approx(lm_loss_from(lazy_model, rec.hidden[0], list(lazy_model.layers),
                                                                   rec, batch_windows=16))
    assert LAZY in bounds.lazy_layers  # the identity block's work is done by its neighbour on any windows
    for v in bounds.layers:
        removing = [r for r in bounds.rows if v.layer in r.removes]
        if removing:
            assert v.removal_bound == min(r.holdout_bound for r in removing)
            assert v.margin == pytest.approx(bounds.holdout_model_loss - v.removal_bound)


def test_verdicts_ignore_in_sample_bounds_when_held_out_ones_exist():
    from pretrain.probes.peeling.bounds import Row, verdicts

    row = Row(layer=1, offset=1, permutation="forward", variant="fp", bound=1.0, model_loss=2.0, fit_mse=0.0,
              init_mse=0.0, removes=[2], seconds=0.0, holdout_bound=2.5)
    in_sample = verdicts([row], 2, model_loss=2.0, tolerance=1e-3)
    held_out = verdicts([row], 2, model_loss=2.0, tolerance=1e-3, holdout_model_loss=2.2)
    assert in_sample[1].lazy and in_sample[1].removal_bound == 1.0
    assert not held_out[1].lazy and held_out[1].removal_bound == 2.5
    assert held_out[1].margin == pytest.approx(2.2 - 2.5)
