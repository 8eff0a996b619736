"""Quantization-aware training's pieces: the levels each scheme uses, the straight-through gradient, that a
binary model still learns, and that an exported QAT model (baked weights) computes what the trained one did."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import Llama, ModelConfig
from model.config import ModelConfigError, QuantizationConfig
from model.quant import QuantLinear, bake, quantize, quantize_model, quantized_state_dict

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, vocab_size=64, max_seq_len=16)
BLOCK_PROJECTIONS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
pytestmark = pytest.mark.usefixtures("one_thread")


def levels_per_row(w: torch.Tensor) -> list[int]:
    return [len(torch.unique(row)) for row in w]


@pytest.mark.numerics
def test_binary_uses_two_levels_per_channel_sign_times_mean_abs():
    w = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    q = quantize(w, 1)
    assert levels_per_row(q) == [2] * 8
    assert torch.equal(q, torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(dim=1, keepdim=True))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_k_bit_uses_the_symmetric_grid_of_2k_minus_1_levels_per_channel(bits):
    q_max = 2 ** (bits - 1) - 1
    dense = torch.linspace(-1, 1, 2001).repeat(3, 1) * torch.tensor([[1.0], [0.5], [3.0]])  # every level reachable
    for w in (dense, torch.randn(6, 40, generator=torch.Generator().manual_seed(bits))):
        q = quantize(w, bits)
        scale = w.abs().amax(dim=1, keepdim=True) / q_max
        grid = q / scale
        assert torch.allclose(grid, grid.round(), atol=1e-4) and grid.abs().max() <= q_max + 1e-4
        assert max(levels_per_row(q)) <= 2 ** bits - 1 < 2 ** bits
        assert torch.allclose(quantize(q, bits), q, atol=1e-6)  # idempotent: baking twice changes nothing
    assert levels_per_row(quantize(dense, bits)) == [2 ** bits - 1] * 3


@pytest.mark.numerics
def test_the_forward_sees_quantized_weights_and_the_gradient_passes_straight_through():
    torch.manual_seed(0)
    layer, x = QuantLinear(16, 8, bias=False), torch.randn(5, 16)
    plain_out = layer(x)
    assert torch.equal(plain_out, F.linear(x, layer.weight))  # bits None: an nn.Linear
    layer.bits = 2
    out = layer(x)
    assert torch.equal(out, F.linear(x, quantize(layer.weight, 2)))
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    assert torch.allclose(layer.weight.grad, grad_out.T @ x)  # d/dq of x q^T, handed to the latent weight as is


def test_a_binary_model_still_learns():
    torch.manual_seed(0)
    model = Llama(CFG)
    quantize_model(model, QuantizationConfig(bits=1))
    pattern = torch.randint(0, CFG.vocab_size, (8,), generator=torch.Generator().manual_seed(1))
    tokens = pattern.repeat(4, 3)[:, :CFG.max_seq_len + 1]  # a repeating sequence: predictable from context
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        logits = model(tokens[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 7 * CFG.n_layers and all(m.bits == 1 for m in linears)
    assert all(min(levels_per_row(m.weight)) > 2 for m in linears)  # the latent weights stay full precision


@pytest.mark.numerics
@pytest.mark.parametrize("scope, quantized", [("blocks", BLOCK_PROJECTIONS), ("attention", BLOCK_PROJECTIONS[:4]),
                                              ("mlp", BLOCK_PROJECTIONS[4:])])
def test_the_exported_weights_compute_what_the_quantized_model_did(scope, quantized):
    torch.manual_seed(0)
    cfg = QuantizationConfig(bits=2, scope=scope)
    model = Llama(CFG)
    quantize_model(model, cfg)
    x = torch.randint(0, CFG.vocab_size, (2, CFG.max_seq_len))
    with torch.no_grad():
        trained = model(x).logits
    state = quantized_state_dict(model.state_dict(), cfg)
    changed = {k for k in state if not torch.equal(state[k], model.state_dict()[k])}
    assert changed == {k for k in state if k.startswith("layers.") and k.split(".")[-2] in quantized}
    exported = Llama(CFG)  # plain: no quantization switched on
    exported.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(exported(x).logits, trained, atol=1e-5)
    bake(model)  # in place: the same weights, and the model no longer quantizes
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert all(m.bits is None for m in model.modules() if isinstance(m, QuantLinear))


def test_bad_quantization_settings_name_the_key():
    with pytest.raises(ModelConfigError, match=r"train.quantization.bits=0"):
        QuantizationConfig(bits=0)
    with pytest.raises(ModelConfigError, match=r"train.quantization.scope='head'.*\['blocks', 'attention', 'mlp'\]"):
        QuantizationConfig(bits=1, scope="head")
