"""Document masking: a token's logits depend on its own document only, wherever that document sits in the
packed window; the layout is computed from the EOS that ends each document."""
from __future__ import annotations

import pytest
import torch

from model import Llama, ModelConfig
from model.llama import document_layout

EOS = 2
CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=32)


def doc(seed: int, n: int) -> torch.Tensor:
    body = torch.randint(3, CFG.vocab_size, (n - 1,), generator=torch.Generator().manual_seed(seed))
    return torch.cat([body, torch.tensor([EOS])])


def logits(model: Llama, window: torch.Tensor, restart: bool) -> torch.Tensor:
    documents, positions = document_layout(window[None], EOS)
    with torch.no_grad():
        return model(window[None], documents=documents, positions=positions if restart else None).logits[0]


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
