"""Document masking: a token's logits depend on its own document only, wherever that document sits in the
packed window; the layout is computed from the EOS that ends each document; the flex_attention kernel computes
what the dense mask does."""
from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
import torch.nn.functional as F

from model import Llama, ModelConfig, llama
from model.llama import Layout, document_attention_kernel, document_layout

EOS = 2
CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=32)


def doc(seed: int, n: int) -> torch.Tensor:
    body = torch.randint(3, CFG.vocab_size, (n - 1,), generator=torch.Generator().manual_seed(seed))
    return torch.cat([body, torch.tensor([EOS])])


def logits(model: Llama, window: torch.Tensor, restart: bool) -> torch.Tensor:
    documents, positions = document_layout(window[None], EOS)
    with torch.no_grad():
        return model(window[None], layout=Layout(documents, positions if restart else None)).logits[0]


@pytest.mark.parametrize("restart", [False, True])
def test_a_documents_logits_ignore_the_other_documents_of_its_window(restart):
    torch.manual_seed(0)
    model = Llama(CFG).eval()
    a, b, c, a2 = doc(1, 7), doc(2, 9), doc(3, 6), doc(4, 7)
    base = logits(model, torch.cat([a, b, c]), restart)
    swapped = logits(model, torch.cat([a2, b, c]), restart)  # another first document of the same length
    assert torch.allclose(base[7:], swapped[7:], atol=1e-5, rtol=0)
    assert not torch.allclose(base[:7], swapped[:7], atol=1e-3)
    alone = logits(model, b, restart)  # the document at the start of its own window
    shifted = logits(model, torch.cat([doc(5, 4), b]), restart)  # behind a shorter one: other positions
    assert torch.allclose(shifted[4:], alone, atol=1e-4, rtol=0)
    plain = model(torch.cat([a, b, c])[None]).logits[0].detach()  # without masking, b sees a
    assert not torch.allclose(plain[7:16], base[7:16], atol=1e-3)


def test_layout_starts_a_document_after_every_eos():
    tokens = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, 4], [EOS, 3, 3, EOS, EOS, 1, 1, 1]])
    documents, positions = document_layout(tokens, EOS)
    assert documents.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2], [0, 1, 1, 1, 2, 3, 3, 3]]
    assert positions.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 2, 0, 0, 1, 2]]


LONG = 300
"""Three of flex_attention's 128-token blocks, the last one partial: the block mask has empty, full and partial
blocks."""


def packed(rows: list[list[int]], seed: int = 0) -> torch.Tensor:
    """Windows [len(rows), LONG] of random documents of the given lengths; each but a row's last ends in EOS (a
    window's last document runs on past it)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, CFG.vocab_size, (len(rows), LONG), generator=gen)
    for row, lengths in zip(tokens, rows):
        assert sum(lengths) == LONG
        for end in torch.tensor(lengths).cumsum(0)[:-1]:
            row[end - 1] = EOS
    return tokens


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """torch refuses flex_attention's backward on CPU with a device check in front of its eager path (its compiled
    CPU kernel is inference-only); the eager path is the device-agnostic reference, so lifting the check lets the
    gradients of our block mask be compared with the dense mask's here. Training on CPU takes the dense mask."""
    module = importlib.import_module("torch.nn.attention.flex_attention")
    monkeypatch.setattr(module, "_validate_device", lambda query, key, value: None)


def logits_and_grads(model: Llama, tokens: torch.Tensor, restart: bool, kernel: str) -> dict[str, torch.Tensor]:
    """Logits, and the gradients of a cross-entropy w.r.t. every parameter and the input embeddings h_0."""
    model.zero_grad()
    documents, positions = document_layout(tokens, EOS)
    out = model(tokens, layout=Layout(documents, positions if restart else None, kernel), return_hidden_states=True)
    out.hidden_states[0].retain_grad()
    targets = torch.roll(tokens, -1, dims=1)
    F.cross_entropy(out.logits.flatten(0, 1), targets.flatten()).backward()
    return {"logits": out.logits.detach(), "h_0": out.hidden_states[0].grad,
            **{name: p.grad.clone() for name, p in model.named_parameters()}}


@pytest.mark.usefixtures("one_thread", "flex_backward_on_cpu")
@pytest.mark.parametrize("n_kv_heads", [2, 4], ids=["gqa", "mha"])
@pytest.mark.parametrize("restart", [False, True], ids=["window_positions", "document_positions"])
def test_flex_attention_gives_the_dense_masks_logits_and_gradients(n_kv_heads, restart):
    torch.manual_seed(0)
    model = Llama(dataclasses.replace(CFG, n_kv_heads=n_kv_heads, max_seq_len=LONG))
    tokens = packed([[7, 150, 100, 43],  # documents across block edges, blocks wholly masked
                     [280, 20],  # blocks wholly visible below the diagonal
                     [LONG]])  # a single document: no EOS
    dense = logits_and_grads(model, tokens, restart, "dense")
    flex = logits_and_grads(model, tokens, restart, "flex")
    assert dense.keys() == flex.keys() and all(g is not None for g in flex.values())
    for name in dense:
        torch.testing.assert_close(flex[name], dense[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")



def test_the_block_mask_skips_other_documents_blocks_and_marks_whole_ones_full():
    documents, _ = document_layout(packed([[7, 150, 100, 43], [280, 20]]), EOS)
    mask = llama.document_block_mask(documents)
    visible = (mask.kv_num_blocks + mask.full_kv_num_blocks)[:, 0]  # [batch, query block]: kv blocks computed
    assert visible.tolist() == [[1, 2, 2], [1, 2, 3]]  # row 0's last query block skips key block 0 (documents 0, 1)
    assert mask.full_kv_num_blocks[1, 0, 1].item() == 1  # row 1: tokens 128-255 see all of 0-127, unmasked

@pytest.mark.usefixtures("one_thread")
def test_flex_attention_of_a_window_with_one_document_is_plain_causal_attention():
    torch.manual_seed(0)
    model = Llama(dataclasses.replace(CFG, max_seq_len=LONG))
    tokens = packed([[LONG], [LONG]])
    documents, _ = document_layout(tokens, EOS)
    with torch.no_grad():
        flex = model(tokens, layout=Layout(documents, kernel="flex")).logits
        causal = model(tokens).logits
    torch.testing.assert_close(flex, causal, atol=1e-5, rtol=1e-5)


def test_auto_takes_flex_on_cuda_only_and_a_bad_kernel_is_refused():
    assert document_attention_kernel("auto", torch.device("cpu")) == "dense"
    assert document_attention_kernel("auto", torch.device("cuda", 0)) == "flex"
    assert [document_attention_kernel(k, torch.device("cpu")) for k in ("dense", "flex")] == ["dense", "flex"]
    with pytest.raises(ValueError, match=r"document_attention='fast'.*\['auto', 'dense', 'flex'\]"):
        document_attention_kernel("fast", torch.device("cpu"))


@pytest.mark.numerics
def test_auto_runs_the_dense_mask_on_cpu_bit_for_bit(monkeypatch):
    built = []
    monkeypatch.setattr(llama, "document_block_mask", lambda documents: built.append(documents))  # flex would fail
    torch.manual_seed(0)
    model = Llama(CFG).eval()
    window = torch.cat([doc(1, 7), doc(2, 9), doc(3, 6)])[None]
    documents, _ = document_layout(window, EOS)
    with torch.no_grad():
        auto, dense = (model(window, layout=Layout(documents, kernel=k)).logits for k in ("auto", "dense"))
    assert torch.equal(auto, dense) and not built
