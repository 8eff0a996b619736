"""The jump monitor's profile is the mean over its fixed validation batches, taken where Validation looks."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model import Llama, ModelConfig
from pretrain.config import ConfigError, load_config
from pretrain.probes.jump.callback import JumpMonitor
from pretrain.probes.jump.settings import JumpMonitorConfig
from regularizers.jump import displacement_profile, zeta_final

CFG = ModelConfig(dim=32, n_layers=3, n_heads=2, n_kv_heads=1, ffn_dim=64, vocab_size=50, max_seq_len=16)


def fake_trainer(model: Llama, windows: np.ndarray, micro: int) -> SimpleNamespace:
    def batch(indices, source):
        tokens = torch.from_numpy(source[indices].astype(np.int64))
        return tokens[:, :-1], tokens[:, 1:]

    return SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(micro_batch_size=micro)),
                           data=SimpleNamespace(val=windows), batch=batch, engine=model)


def test_profile_is_the_mean_of_the_per_batch_profiles():
    torch.manual_seed(0)
    model = Llama(CFG)
    with torch.no_grad():  # unit gains only rescale h_L, which no angle sees: spread them as training does
        model.norm.weight.uniform_(0.5, 1.5)
    windows = np.random.default_rng(0).integers(0, 50, (40, 13))
    got = JumpMonitor(JumpMonitorConfig(batches=5)).measure(fake_trainer(model, windows, micro=3))
    per_batch = []
    with torch.no_grad():
        for b in range(5):  # one rank: batch b holds windows 3b..3b+2
            out = model(torch.from_numpy(windows[3 * b:3 * b + 3, :-1]), return_hidden_states=True)
            per_batch.append(displacement_profile(out.hidden_states, final=out.final_normed))
    mean = torch.stack(per_batch).mean(dim=0)
    assert [got[f"jump/psi_{l}"] for l in (1, 2, 3)] == pytest.approx(mean.tolist(), abs=1e-6)
    assert got["jump/zeta_L"] == pytest.approx(zeta_final(mean).item(), abs=1e-4)
    raw = torch.stack([displacement_profile(model(torch.from_numpy(windows[3 * b:3 * b + 3, :-1]),
                                                  return_hidden_states=True).hidden_states) for b in range(5)]).mean(0)
    assert got["jump/zeta_L_before_norm"] == pytest.approx(zeta_final(raw).item(), abs=1e-4)
    assert got["jump/psi_L_before_norm"] == pytest.approx(raw[-1].item(), abs=1e-6)
    assert got["jump/psi_L_before_norm"] != pytest.approx(got["jump/psi_3"], abs=1e-6)  # the norm moves h_L
    excluded = JumpMonitor(JumpMonitorConfig(batches=5, final_norm="exclude")).measure(fake_trainer(model, windows, 3))
    assert excluded["jump/zeta_L"] == pytest.approx(got["jump/zeta_L_before_norm"], abs=1e-6)
    assert "jump/zeta_L_before_norm" not in excluded
    one = JumpMonitor(JumpMonitorConfig(batches=1)).measure(fake_trainer(model, windows, micro=3))
    assert one["jump/psi_3"] == pytest.approx(per_batch[0][2].item(), abs=1e-6)
    assert one["jump/psi_3"] != pytest.approx(got["jump/psi_3"], abs=1e-6)  # the average is not batch 0


def test_batches_must_be_positive():
    with pytest.raises(ConfigError, match="monitors.jump.batches=0 must be > 0"):
        load_config(None, ["monitors.jump.batches=0"])
