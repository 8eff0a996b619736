"""ModelConfig: validation names the field, parameter and FLOP counts agree with the built model, presets load."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from model import Llama, ModelConfig, ModelConfigError

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "model"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dim": 130, "n_heads": 4}, "model.n_heads"),
        ({"n_heads": 4, "n_kv_heads": 3}, "model.n_kv_heads"),
        ({"dim": 12, "n_heads": 4}, "head_dim"),
        ({"dim": 0}, "model.dim"),
        ({"n_layers": -1}, "model.n_layers"),
        ({"ffn_dim": 0}, "model.ffn_dim"),
        ({"vocab_size": 0}, "model.vocab_size"),
        ({"max_seq_len": 0}, "model.max_seq_len"),
        ({"n_layers": True}, "model.n_layers"),
        ({"norm_eps": 0.0}, "model.norm_eps"),
        ({"rope_theta": -1.0}, "model.rope_theta"),
        ({"init_std": 0.0}, "model.init_std"),
        ({"norm_eps": "1e-5"}, "model.norm_eps"),  # what YAML 1.1 makes of `1e-5`
    ],
)
def test_invalid_shapes_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ModelConfigError, match=re.escape(field)):
        ModelConfig(**kwargs)


SHAPES = [
    {"tie_embeddings": tie, "n_heads": 4, "n_kv_heads": kv}
    for tie in (False, True)
    for kv in (4, 2, 1)
]


@pytest.mark.parametrize("shape", SHAPES)
def test_num_params_counts_the_built_model(shape: dict) -> None:
    cfg = ModelConfig(dim=32, n_layers=2, ffn_dim=48, vocab_size=50, max_seq_len=16, **shape)
    model = Llama(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())  # shared tensors counted once
    assert cfg.num_params(include_embedding=False) == cfg.num_params() - model.tok_embeddings.weight.numel()


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                   is_causal: bool = False, enable_gqa: bool = False) -> torch.Tensor:
    """SDPA spelled out in matmuls, so FlopCounterMode sees the attention FLOPs (it skips CPU SDPA kernels)."""
    assert attn_mask is None and is_causal  # the plain causal model is what is counted
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    t = q.shape[-2]
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("tie", [False, True])
def test_flops_per_token_matches_counted_training_flops(tie: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=128, max_seq_len=32,
                      tie_embeddings=tie)
    model = Llama(cfg)
    monkeypatch.setattr(F, "scaled_dot_product_attention", math_attention)
    batch, seq = 2, 32
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, cfg.vocab_size, (batch, seq))).logits.sum().backward()
    counted = counter.get_total_flops() / (batch * seq)
    # The formula's N counts every non-embedding parameter (PaLM); norm gains are in N but do no matmul.
    norm_params = sum(p.numel() for n, p in model.named_parameters() if n.endswith("norm.weight"))
    assert cfg.flops_per_token(seq) == pytest.approx(counted + 6 * norm_params, rel=1e-12)


def load_preset(name: str) -> tuple[ModelConfig, str]:
    text = (PRESETS / f"{name}.yaml").read_text()
    return ModelConfig(**yaml.safe_load(text)), text


@pytest.mark.parametrize("name", ["tiny", "125m", "350m", "1b", "7b"])
def test_presets_load_and_state_their_true_size(name: str) -> None:
    cfg, text = load_preset(name)
    assert set(yaml.safe_load(text)) == {f.name for f in dataclasses.fields(ModelConfig)}
    stated = re.search(r"num_params\(\) = ([\d,]+)", text)
    assert stated is not None and int(stated.group(1).replace(",", "")) == cfg.num_params()


def test_tiny_preset_is_a_cpu_demo_size() -> None:
    cfg, _ = load_preset("tiny")
    assert 1_000_000 <= cfg.num_params() <= 5_000_000


def test_7b_preset_is_llama2_7b() -> None:
    cfg, _ = load_preset("7b")
    assert cfg.num_params() == 6_738_415_616  # the published Llama-2-7B count
