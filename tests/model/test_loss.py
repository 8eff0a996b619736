"""The fused, chunked LM head + cross-entropy against the plain path: same losses, log Z and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import Llama
from model.config import ModelConfig
from model.llama import FusedLoss
from model.loss import chunked_linear_cross_entropy
from pretrain.config import ConfigError, load_config
from regularizers import Regularizer, register


def plain(hidden, weight, targets):
    logits = (hidden @ weight.T).float()
    return F.cross_entropy(logits, targets, reduction="none"), torch.logsumexp(logits, dim=-1)


def reductions(z_weight: float, per_token: bool):
    """A mean loss (+ a z-loss); or, per token, squared losses: every token its own upstream gradient."""
    if per_token:
        return lambda loss, log_z: loss.square().sum() + z_weight * log_z.square().sum()
    return lambda loss, log_z: loss.mean() + z_weight * log_z.square().mean()


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])  # 1000 > tokens: one chunk
@pytest.mark.parametrize("z_weight, per_token", [(0.0, False), (0.3, False), (0.0, True), (0.3, True)])
def test_losses_log_z_and_gradients_equal_the_plain_path(chunk, z_weight, per_token):
    """Both gradient paths (in forward when log Z needs none, recompute when it does), under a mean and under
    per-token upstream gradients."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=g, requires_grad=True)
    weight = (0.25 * torch.randn(97, 16, generator=g)).requires_grad_()  # logits of std ~1, as in a trained LM
    targets = torch.randint(0, 97, (50,), generator=g)
    reduce = reductions(z_weight, per_token)
    grads = []
    for fn in (plain, lambda h, w, t: chunked_linear_cross_entropy(h, w, t, chunk, log_z_grad=z_weight > 0)):
        loss, log_z = fn(hidden, weight, targets)
        reduce(loss, log_z).backward()
        grads.append((loss.detach(), log_z.detach(), hidden.grad.clone(), weight.grad.clone()))
        hidden.grad = weight.grad = None
    for want, got in zip(*grads):  # fp32: entries within 1e-5 of each tensor's own scale
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.numerics
def test_log_z_without_gradient_is_detached_and_no_grad_skips_the_gradient_work():
    hidden, weight = torch.randn(6, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    targets = torch.randint(0, 9, (6,))
    loss, log_z = chunked_linear_cross_entropy(hidden, weight, targets, 4, log_z_grad=False)
    assert loss.requires_grad and not log_z.requires_grad
    with torch.no_grad():
        again, _ = chunked_linear_cross_entropy(hidden, weight, targets, 4, log_z_grad=False)
    assert not again.requires_grad and again.equal(loss.detach())


@pytest.mark.parametrize("tie, log_z_grad", [(False, False), (True, True)])
def test_llama_with_targets_matches_its_logits(tie, log_z_grad):
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=128, max_seq_len=16,
                      tie_embeddings=tie)
    model = Llama(cfg)
    tokens = torch.randint(0, 128, (3, 12))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    plain_loss = F.cross_entropy(model(inputs).logits.flatten(0, 1), targets.flatten())
    plain_loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model(inputs, fused_loss=FusedLoss(targets, chunk=5, log_z_grad=log_z_grad))
    assert out.logits is None and out.token_loss.shape == targets.shape
    out.token_loss.mean().backward()
    torch.testing.assert_close(out.token_loss.mean(), plain_loss, rtol=1e-6, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-5, atol=1e-6, msg=n)


def test_bad_chunk_and_logit_reading_regularizers_are_refused():
    with pytest.raises(ValueError, match="chunk=0"):
        chunked_linear_cross_entropy(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.long), 0)
    with pytest.raises(ConfigError, match="train.loss_chunk"):
        load_config("configs/tiny.yaml", ["train.loss_chunk=-1"])
    load_config("configs/tiny.yaml", ["train.loss_chunk=256", "regularizers=[{name: z_loss}, {name: jreg}]"])
    with pytest.raises(ConfigError, match=r"\['reads_logits'\] read the full logits"):
        load_config("configs/tiny.yaml", ["train.loss_chunk=256", "regularizers=[{name: reads_logits}]"])


@register("reads_logits")
class ReadsLogits(Regularizer):
    def penalty(self, inputs):
        return inputs.logits.float().mean(), {}
