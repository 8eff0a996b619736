"""Peeling's controls, scored out of sample: a normally trained model has no lazy layer (negative), and the
identity blocks that zero_block growth interleaves into it are each flagged, and only they (positive)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import growth
from model import Llama, ModelConfig
from pretrain.probes.peeling.bounds import compute_bounds
from pretrain.probes.peeling.settings import PeelingSettings
from test_peeling import SEQ, VOCAB, markov_windows, train_on_markov

CFG = ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=VOCAB, max_seq_len=SEQ)
SETTINGS = PeelingSettings(batch_windows=16)  # the job's defaults, the cheap detector


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]  # verdicts of models trained here


@pytest.fixture(scope="module")
def trained(one_thread) -> Llama:
    """3 layers, every one trained (no layer held back), on test_peeling's second-order Markov source."""
    torch.manual_seed(0)
    model = Llama(CFG)
    loss = train_on_markov(model)
    assert loss < 1.2, f"the control model did not learn (loss {loss:.3f})"
    return model.eval()


def peel(model: Llama):
    return compute_bounds(model, markov_windows(SETTINGS.calib_windows, seed=3), SETTINGS,
                          holdout=markov_windows(SETTINGS.holdout_windows, seed=4))


def test_negative_control_a_trained_model_has_no_lazy_layer(trained):
    bounds = peel(trained)
    assert bounds.scored_on == "held-out"
    assert bounds.lazy_layers == [], bounds.layers
    assert all(v.margin < -SETTINGS.tolerance for v in bounds.layers)


def test_positive_control_every_interleaved_identity_block_is_flagged(trained):
    grown_cfg = dataclasses.replace(CFG, n_layers=6)
    result = growth.grow(CFG, trained.state_dict(), "zero_block", grown_cfg, position="interleave", seed=3)
    assert result.record["layer_map"] == [0, None, 1, None, 2, None]
    grown = Llama(grown_cfg)
    grown.load_state_dict(result.state_dict)
    bounds = peel(grown.eval())
    assert bounds.lazy_layers == [2, 4, 6]  # 1-based: the inserted blocks, and none of the trained ones
    for v in bounds.layers:
        if v.layer in (2, 4, 6):
            assert v.margin == pytest.approx(0.0, abs=1e-6)  # the previous block, unchanged, already does it
        else:
            assert v.margin < -SETTINGS.tolerance
