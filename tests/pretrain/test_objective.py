"""The objective alone, on a bare Llama: lm loss as the plain cross-entropy, document masking's kept-token mean,
the chunked head's equality, and regularizer terms added to the total."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import Llama
from model.llama import Layout, document_layout
from pretrain.config import ConfigError, load_config
from pretrain.data.tokenizer import EOS_ID
from pretrain.objective import Objective, refuse_unsupported_attention

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


@pytest.mark.numerics
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



def test_the_model_gets_the_configured_document_attention_kernel():
    objective, model, (inputs, targets) = setup("data.document_masking=true", "train.document_attention=dense")
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["layout"].kernel)
        return model(*args, **kwargs)

    objective.lm_forward(spy, inputs, targets)
    assert seen == ["dense"]


def test_flex_document_attention_is_refused_for_training_off_cuda():
    """torch's flex_attention has no backward on CPU: refused at start-up (`--check` too), naming the key."""
    masked = load_config("configs/tiny.yaml", ["data.document_masking=true", "train.document_attention=flex"])
    with pytest.raises(ConfigError, match=r"train\.document_attention=flex .*auto or dense"):
        refuse_unsupported_attention(masked, torch.device("cpu"))
    refuse_unsupported_attention(masked, torch.device("cuda", 0))
    refuse_unsupported_attention(load_config("configs/tiny.yaml", ["train.document_attention=flex"]),
                                 torch.device("cpu"))  # unmasked: never runs

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


def accumulated_gradient(objective, model, batches, world: int = 1) -> torch.Tensor:
    """The gradient DeepSpeed applies for these micro-batches on one rank: each micro-batch's loss scaled by
    1/grad_accum (the ranks' mean is 1/world of the sum of such gradients)."""
    normalizer = objective.step_normalizer(batches, world)
    model.zero_grad()
    for batch in batches:
        (objective(model, batch, 0, normalizer)[0] / len(batches)).backward()
    return model.tok_embeddings.weight.grad.clone()


@pytest.mark.parametrize("cuts", [[1, 1, 1, 1], [2, 2], [1, 3]])
def test_under_document_masking_the_update_is_the_steps_token_mean_however_the_batch_is_split(cuts):
    """Eight rows whose documents differ in length (fewer kept tokens where documents are short): one micro-batch
    of eight, or the micro-batches `cuts` (in rows x 2), give the gradient of the mean loss over all kept tokens."""
    objective, model, _ = setup("data.document_masking=true")
    torch.manual_seed(1)
    tokens = torch.randint(3, 64, (8, 17))
    for row in range(4):  # short documents in the first half: many EOS, fewer kept predictions
        tokens[row, 2::3] = EOS_ID
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    out = model(inputs, layout=Layout(document_layout(inputs, EOS_ID)[0])).logits
    per_token = F.cross_entropy(out.flatten(0, 1), targets.flatten(), reduction="none")
    keep = inputs.flatten() != EOS_ID
    (reference,) = torch.autograd.grad(per_token[keep].mean(), model.tok_embeddings.weight)
    whole = accumulated_gradient(objective, model, [(inputs, targets)])
    torch.testing.assert_close(whole, reference, rtol=1e-5, atol=1e-7)
    bounds = torch.cumsum(torch.tensor([0, *cuts]) * 2, 0).tolist()
    split = [(inputs[a:b], targets[a:b]) for a, b in zip(bounds, bounds[1:])]
    torch.testing.assert_close(accumulated_gradient(objective, model, split), reference, rtol=1e-5, atol=1e-7)

    # each micro-batch's own mean (what growlm did before) weighs the short documents' tokens more
    model.zero_grad()
    for inputs_mb, targets_mb in split:
        (objective.lm_forward(model, inputs_mb, targets_mb)[0] / len(split)).backward()
    assert not torch.allclose(model.tok_embeddings.weight.grad, reference, rtol=1e-3, atol=1e-6)


def test_without_document_masking_there_is_no_step_normalizer():
    objective, _, batch = setup()
    assert objective.step_normalizer([batch, batch], world=2) is None
