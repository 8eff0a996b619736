"""The Llama module: hidden-state contract, activation-checkpointing hook, initialisation."""
from __future__ import annotations

import functools
import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from model import Llama, ModelConfig
from model.llama import rope_cos_sin

CFG = ModelConfig(dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=48, vocab_size=64, max_seq_len=16)


def tokens(cfg: ModelConfig = CFG, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, cfg.max_seq_len), generator=torch.Generator().manual_seed(0))


@pytest.mark.numerics
def test_hidden_states_are_the_residual_stream() -> None:
    torch.manual_seed(0)
    model = Llama(CFG).eval()
    x = tokens()
    with torch.no_grad():
        out = model(x, return_hidden_states=True)
        cos, sin = rope_cos_sin(x.shape[1], CFG, x.device)
        assert len(out.hidden_states) == CFG.n_layers + 1
        assert torch.equal(out.hidden_states[0], model.tok_embeddings(x))
        for layer, (h_in, h_out) in zip(model.layers, zip(out.hidden_states, out.hidden_states[1:])):
            assert torch.equal(layer(h_in, cos, sin), h_out)
        assert torch.equal(model.norm(out.hidden_states[-1]), out.final_normed)
        assert torch.equal(model.output(out.final_normed), out.logits)
        plain = model(x)
    assert plain.hidden_states is None and plain.final_normed is None
    assert torch.equal(plain.logits, out.logits)


def loss_and_grads(model: Llama, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(x[:, :-1]).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.numerics
def test_activation_checkpointing_changes_nothing_numerically() -> None:
    torch.manual_seed(0)
    model = Llama(CFG).train()
    x = tokens()
    loss, grads = loss_and_grads(model, x)
    checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    calls = []

    def counting_checkpoint(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        calls.append(fn)
        return checkpoint(fn, *args)

    model.checkpoint_fn = counting_checkpoint
    ckpt_loss, ckpt_grads = loss_and_grads(model, x)
    assert len(calls) == CFG.n_layers  # the hook really wrapped every block
    assert torch.equal(loss, ckpt_loss)
    for name, grad in grads.items():
        assert torch.equal(ckpt_grads[name], grad), name


@pytest.mark.parametrize("scale_residual", [True, False])
def test_init_std(scale_residual: bool) -> None:
    cfg = ModelConfig(dim=256, n_layers=8, n_heads=4, n_kv_heads=2, ffn_dim=512, vocab_size=256, max_seq_len=16,
                      init_std=0.02, scale_residual_init=scale_residual)
    torch.manual_seed(0)
    model = Llama(cfg)
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layers) if scale_residual else 0.02
    block = model.layers[3]
    # >= 65k samples per matrix: the sample std is within ~0.3% of the true one; 5% separates 0.02 from 0.005.
    for weight, expected in [
        (block.attention.wq.weight, 0.02),
        (block.feed_forward.w1.weight, 0.02),
        (model.tok_embeddings.weight, 0.02),
        (block.attention.wo.weight, residual_std),
        (block.feed_forward.w2.weight, residual_std),
    ]:
        assert weight.std().item() == pytest.approx(expected, rel=0.05)
        assert abs(weight.mean().item()) < 0.05 * expected
    assert torch.equal(block.ffn_norm.weight, torch.ones(cfg.dim))
