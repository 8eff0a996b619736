"""End to end: JREG lowers the final-layer displacement of a tiny model trained a few hundred steps on CPU.

At this scale (4 layers, dim 64, 300 steps) the baseline's profile usually ends without a rise, so zeta_L is
often 0 in both arms and cannot fall; what JREG penalizes, Psi_L (zeta_L is built from it), is the effect
that is always measurable. Both arms share seed, init, data order and optimizer.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from launching import ROOT
from model import Llama, ModelConfig
from pretrain.data import DataConfig, prepare_data
from regularizers import LossInputs, build_regularizers, displacement_profile, zeta_final

pytestmark = pytest.mark.slow


def train_and_profile(data, jreg_weight: float, steps: int = 300) -> tuple[torch.Tensor, float]:
    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=512,
                              max_seq_len=64, tie_embeddings=True))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    regs = build_regularizers([{"name": "jreg", "weight": jreg_weight}] if jreg_weight else [])
    rng = np.random.default_rng(0)
    for step in range(steps):
        tokens = torch.as_tensor(data.train[rng.integers(0, len(data.train), 16)].astype("int64"))
        out = model(tokens[:, :-1], return_hidden_states=bool(regs))
        loss = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten())
        for reg in regs:
            loss = loss + reg(LossInputs(tokens=tokens[:, :-1], targets=tokens[:, 1:], logits=out.logits,
                                         hidden_states=out.hidden_states, final_normed=out.final_normed,
                                         step=step))[0]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        tokens = torch.as_tensor(data.val[:32].astype("int64"))
        out = model(tokens[:, :-1], return_hidden_states=True)
    profile = displacement_profile(out.hidden_states, final=out.final_normed)
    return profile, zeta_final(profile).item()


@pytest.mark.numerics
def test_jreg_lowers_the_final_layer_displacement():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = prepare_data(DataConfig(seq_len=64, cache_dir=str(ROOT / ".cache" / "growlm"),
                                       embedded_max_bytes=1_000_000, tokenizer_sample_bytes=1_000_000,
                                       val_fraction=0.05), 512)
        base_profile, base_zeta = train_and_profile(data, 0.0)
        jreg_profile, jreg_zeta = train_and_profile(data, 1.0)
    finally:
        torch.set_num_threads(threads)
    assert jreg_profile[-1] < 0.6 * base_profile[-1], (base_profile.tolist(), jreg_profile.tolist())
    assert jreg_zeta <= base_zeta + 1e-6
