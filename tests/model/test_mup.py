"""µP in the model (model/mup.py): init scales, the readout multiplier, the config, and an HF export that computes
the same logits with no µP code."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from model import Llama, ModelConfig, ModelConfigError, save_hf_folder
from model.config import MupConfig
from model.llama import FusedLoss
from pretrain.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = dict(n_layers=2, n_kv_heads=2, vocab_size=128, max_seq_len=32)


def cfg_at(dim: int, base_width: int | None, tie: bool = False) -> ModelConfig:
    """Width `dim` at head_dim 16, ffn 2 x dim; µP from `base_width` (None: off)."""
    return ModelConfig(dim=dim, n_heads=dim // 16, ffn_dim=2 * dim, tie_embeddings=tie,
                       mup=MupConfig(base_width) if base_width else None, **SHAPE)


def tokens_for(cfg: ModelConfig) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len), generator=torch.Generator().manual_seed(1))


def test_init_std_follows_fan_in_for_hidden_weights_only() -> None:
    """dim 512 from base 64: m = 8, so hidden stds are 0.02 / sqrt(8) (residual outputs also / sqrt(2 L)), while
    the embedding and head keep 0.02 and the norm gains 1."""
    torch.manual_seed(0)
    model = Llama(cfg_at(512, 64))
    hidden, residual = 0.02 / math.sqrt(8), 0.02 / math.sqrt(8) / math.sqrt(2 * 2)
    expected = {"tok_embeddings.weight": 0.02, "output.weight": 0.02, "layers.0.attention.wq.weight": hidden,
                "layers.1.feed_forward.w1.weight": hidden, "layers.0.attention.wo.weight": residual,
                "layers.1.feed_forward.w2.weight": residual}
    params = dict(model.named_parameters())
    for name, std in expected.items():
        assert params[name].std().item() == pytest.approx(std, rel=0.03), name
    assert all(p.eq(1).all() for n, p in params.items() if n.endswith("norm.weight"))


@pytest.mark.numerics
@pytest.mark.parametrize("tie", [False, True])
def test_at_the_base_width_the_mup_model_is_the_standard_one(tie: bool) -> None:
    torch.manual_seed(0)
    standard = Llama(cfg_at(64, None, tie))
    torch.manual_seed(0)
    mup = Llama(cfg_at(64, 64, tie))
    assert all(torch.equal(a, b) for a, b in zip(standard.state_dict().values(), mup.state_dict().values()))
    tokens = tokens_for(standard.config)
    with torch.no_grad():
        assert torch.equal(standard(tokens).logits, mup(tokens).logits)


@pytest.mark.parametrize("tie", [False, True])
def test_logits_carry_the_readout_multiplier_in_both_head_paths(tie: bool) -> None:
    """The same weights under µP from base 32 at dim 128 give 32/128 of the standard logits; the fused-loss head
    (targets given) computes the cross-entropy of those scaled logits."""
    mup_cfg = cfg_at(128, 32, tie)
    torch.manual_seed(0)
    mup = Llama(mup_cfg).eval()
    standard = Llama(dataclasses.replace(mup_cfg, mup=None)).eval()
    standard.load_state_dict(mup.state_dict())
    tokens = tokens_for(mup_cfg)
    with torch.no_grad():
        scaled = mup(tokens).logits
        torch.testing.assert_close(scaled, standard(tokens).logits * 0.25, rtol=1e-5, atol=1e-6)
        fused = mup(tokens[:, :-1], fused_loss=FusedLoss(tokens[:, 1:], chunk=16)).token_loss
    plain = F.cross_entropy(scaled[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    torch.testing.assert_close(fused.flatten(), plain, rtol=1e-5, atol=1e-5)


@pytest.mark.numerics
@pytest.mark.parametrize("tie", [False, True])
def test_exported_mup_model_matches_growlms_logits_without_mup_code(tmp_path: Path, tie: bool) -> None:
    cfg = cfg_at(128, 32, tie)
    torch.manual_seed(0)
    ours = Llama(cfg).eval()
    with torch.no_grad():  # gains away from 1, so a gain mapped wrongly would show
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    hf = LlamaForCausalLM.from_pretrained(save_hf_folder(ours.state_dict(), cfg, tmp_path / "hf")).eval()
    assert "mup" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    tokens = tokens_for(cfg)
    with torch.no_grad():
        ours_logits, hf_logits = ours(tokens).logits, hf(tokens).logits
    assert (ours_logits - hf_logits).abs().max().item() < 1e-4
    assert torch.equal(hf.model.norm.weight, ours.norm.weight * 0.25)


def test_mup_survives_the_weights_folder_json() -> None:
    cfg = cfg_at(128, 32)
    assert ModelConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


@pytest.mark.parametrize("value, reason", [(0, "must be > 0"), (-8, "must be > 0"), (1.5, "must be an integer"),
                                           (True, "must be an integer"), ("64", "must be an integer"),
                                           (None, "is required .*or model.mup=null")])
def test_a_bad_base_width_names_the_key(value, reason) -> None:
    with pytest.raises(ModelConfigError, match=rf"model\.mup\.base_width.* {reason}"):
        MupConfig(value)


def test_the_run_config_takes_mup() -> None:
    assert load_config(None, ["model.mup.base_width=64"]).model.mup == MupConfig(64)
    assert load_config(None, ["model.mup={base_width: 32}"]).model.mup == MupConfig(32)
    assert load_config(None).model.mup is None


@pytest.mark.parametrize("overrides, match", [
    (["model.mup.base_width=0"], r"model\.mup\.base_width=0 must be > 0"),
    (["model.mup={}"], r"model\.mup\.base_width is required"),
    (["model.mup=64"], r"model\.mup is a section with keys \['base_width'\] \(or null\), not a value; got 64"),
    (["model.mup.width=64"], r"unknown config key 'model\.mup\.width'; valid keys in section 'model\.mup': "
                             r"\['base_width'\]"),
    (["model.mup.base_width=64", "train.optimizer=sgd"], r"model\.mup=.*use train\.optimizer=adamw or model\.mup=null"),
])
def test_the_run_config_refuses_bad_mup_naming_the_key(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)
