"""The objective alone, on a bare Llama: lm loss as the plain cross-entropy, document masking's kept-token mean,
the chunked head's equality, and regularizer terms added to the total."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import Llama
from pretrain.config import load_config
from pretrain.data.tokenizer import EOS_ID
from pretrain.objective import Objective

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2", "model.ffn_dim=64",
         "model.vocab_size=64", "data.seq_len=16", "model.max_seq_len=16"]


def setup(*overrides: str):
    cfg = load_config("configs/tiny.yaml", [*SMALL, *overrides])
    torch.manual_seed(0)
    model = Llama(cfg.model)
    tokens = torch.randint(3, 64, (2, 17))
    tokens[0, 5] = tokens[1, 11] = EOS_ID
    return Objective(cfg, "tokenizer.model"), model, (tokens[:, :-1], tokens[:, 1:])


def test_lm_loss_is_the_mean_cross_entropy_and_the_total_without_regularizers():
    objective, model, (inputs, targets) = setup()
    total, metrics = objective(model, (inputs, targets), step=0)
    expected = F.cross_entropy(model(inputs).logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(total, expected)
    assert set(metrics) == {"lm_loss", "loss"} and torch.equal(metrics["loss"], total.detach())


def test_document_masking_averages_over_predictions_not_made_from_an_eos():
    objective, model, (inputs, targets) = setup("data.document_masking=true")
    loss, out = objective.lm_forward(model, inputs, targets)
    per_token = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), reduction="none")
    keep = inputs.flatten() != EOS_ID
    assert keep.sum() == inputs.numel() - 2
    torch.testing.assert_close(loss, per_token[keep].mean())


def test_the_chunked_head_gives_the_plain_loss_and_gradient():
    objective, model, batch = setup()
    chunked = Objective(load_config("configs/tiny.yaml", [*SMALL, "train.loss_chunk=8"]), "tokenizer.model")
    plain_loss = objective(model, batch, 0)[0]
    (plain_grad,) = torch.autograd.grad(plain_loss, model.tok_embeddings.weight)
    chunk_loss = chunked(model, batch, 0)[0]
    (chunk_grad,) = torch.autograd.grad(chunk_loss, model.tok_embeddings.weight)
    torch.testing.assert_close(chunk_loss, plain_loss)
    torch.testing.assert_close(chunk_grad, plain_grad)


def test_regularizer_terms_add_to_the_total_and_are_logged_under_their_name():
    objective, model, batch = setup("regularizers=[{name: jreg, weight: 0.5}]")
    assert objective.need_hidden
    total, metrics = objective(model, batch, step=3)
    assert metrics["reg/jreg"] > 0
    torch.testing.assert_close(total, metrics["lm_loss"] + metrics["reg/jreg"])
    assert any(k.startswith("reg/jreg/") for k in metrics)
