"""The fused, chunked LM head + cross-entropy against the plain path: same losses, log Z and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import Llama
from model.config import ModelConfig
from model.loss import chunked_linear_cross_entropy
from pretrain.config import ConfigError, load_config
from regularizers import Regularizer, register


def plain(hidden, weight, targets):
    logits = (hidden @ weight.T).float()
    return F.cross_entropy(logits, targets, reduction="none"), torch.logsumexp(logits, dim=-1)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])  # 1000 > tokens: one chunk
def test_losses_log_z_and_gradients_equal_the_plain_path(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=g, requires_grad=True)
    weight = torch.randn(97, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 97, (50,), generator=g)
    grads = []
    for fn in (plain, lambda h, w, t: chunked_linear_cross_entropy(h, w, t, chunk)):
        loss, log_z = fn(hidden, weight, targets)
        # a mean loss plus a z-loss: gradients flow through both outputs
        (loss.mean() + 0.3 * log_z.square().mean()).backward()
        grads.append((loss.detach(), log_z.detach(), hidden.grad.clone(), weight.grad.clone()))
        hidden.grad = weight.grad = None
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_per_token_output_gradients_match():
    """Squared outputs give every token its own upstream gradient (not the uniform 1/N of a mean)."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (9,), generator=g)
    # the logits are fp32 on both paths, which bounds the agreement
    fn = lambda h, w: sum(o.double().square().sum() for o in chunked_linear_cross_entropy(h, w, targets, 4))  # noqa: E731
    want_h, want_w = torch.autograd.grad(sum(o.double().square().sum() for o in plain(hidden, weight, targets)),
                                         (hidden, weight))
    got_h, got_w = torch.autograd.grad(fn(hidden, weight), (hidden, weight))
    torch.testing.assert_close(got_h, want_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_w, want_w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_llama_with_targets_matches_its_logits(tie):
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
    out = model(inputs, targets=targets, loss_chunk=5)
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
