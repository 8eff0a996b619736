"""pretrain/probes/jump/profile.py on an exported growlm model equals the metric on our own Llama's hidden states."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import Llama, ModelConfig
from model.hf import save_hf_folder
from pretrain.data.tokenizer import train_tokenizer
from pretrain.probes.jump import profile as jump_profile
from regularizers.jump import displacement_profile, zeta_final

TOL = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Llama]:
    """A 3-layer growlm Llama with non-unit norm gains (so include and exclude differ), exported with a tokenizer."""
    tmp = tmp_path_factory.mktemp("jump_profile")
    sp_path = train_tokenizer([jump_profile.default_text(60_000)], tmp / "sp.model", vocab_size=512, model_type="bpe")
    cfg = ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=512, max_seq_len=48,
                      tie_embeddings=True)
    torch.manual_seed(0)
    ours = Llama(cfg).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.3, 2.0)
    folder = save_hf_folder(ours.state_dict(), cfg, tmp / "hf", tokenizer_files={"tokenizer.model": sp_path})
    return folder, ours


@pytest.mark.parametrize("final_norm", ["include", "exclude"])
@pytest.mark.parametrize("form", ["cosine", "angular"])
def test_script_profile_equals_our_models_profile(exported, final_norm: str, form: str) -> None:
    folder, ours = exported
    text = "The quick brown fox jumps over the lazy dog. " * 20 + jump_profile.default_text(3000)
    rec = jump_profile.measure(folder, text, max_tokens=200, seq_len=40, form=form, final_norm=final_norm)
    # The same tokens through our model: consecutive rows of 40 of the exported tokenizer's encoding
    # (which equals sentencepiece's: tests/model/test_model_hf.py), so only the hidden-state path is compared.
    _, tokenizer = jump_profile.load_model(folder)
    tokens = torch.tensor(tokenizer(text)["input_ids"][:200]).view(5, 40)
    assert (rec["tokens"], rec["seq_len"], rec["n_layers"]) == (200, 40, 3)
    with torch.no_grad():
        out = ours(tokens, return_hidden_states=True)
    expected = displacement_profile(out.hidden_states, form=form,
                                    final=out.final_normed if final_norm == "include" else None)
    assert torch.allclose(torch.tensor(rec["psi"]), expected, atol=TOL, rtol=0)
    assert rec["zeta_L"] == pytest.approx(zeta_final(expected).item(), abs=100 * TOL)


def test_include_and_exclude_differ_only_at_the_last_layer(exported) -> None:
    """Guards the hook: h_0..h_{L-1} are shared, only Psi_L sees the final norm (gains are not 1 here)."""
    folder, _ = exported
    model, _ = jump_profile.load_model(folder)
    tokens = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    inc = jump_profile.hf_profile(model, tokens, final_norm="include", batch_size=3)
    exc = jump_profile.hf_profile(model, tokens, final_norm="exclude", batch_size=3)
    assert torch.allclose(inc[:-1], exc[:-1], atol=1e-7)
    assert abs(inc[-1] - exc[-1]) > 1e-3


def test_profile_averages_over_batches_like_one_batch(exported) -> None:
    folder, _ = exported
    model, _ = jump_profile.load_model(folder)
    tokens = torch.randint(0, 300, (5, 16), generator=torch.Generator().manual_seed(1))
    whole = jump_profile.hf_profile(model, tokens, batch_size=5)
    split = jump_profile.hf_profile(model, tokens, batch_size=2)  # batches of 2, 2, 1 rows
    assert torch.allclose(whole, split, atol=1e-6)


def test_token_rows_drops_the_remainder_and_caps_tokens() -> None:
    rows = jump_profile.token_rows(list(range(23)), seq_len=5, max_tokens=100)
    assert rows.shape == (4, 5) and rows[-1].tolist() == [15, 16, 17, 18, 19]
    assert jump_profile.token_rows(list(range(23)), seq_len=5, max_tokens=12).shape == (2, 5)
    assert jump_profile.token_rows([7, 8, 9], seq_len=5, max_tokens=100).shape == (1, 3)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        jump_profile.token_rows([7], seq_len=5, max_tokens=100)


def test_main_writes_a_json_per_model_and_one_plot(exported, tmp_path: Path) -> None:
    folder, _ = exported
    text = tmp_path / "t.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 30)
    out = tmp_path / "out"
    rc = jump_profile.main([str(folder), str(folder), "--out", str(out), "--text-file", str(text),
                            "--max-tokens", "100", "--final-norm", "exclude"])
    assert rc == 0
    records = sorted(out.glob("*.json"))
    assert len(records) == 2  # the same folder twice gets two distinct names
    first, second = (json.loads(p.read_text()) for p in records)
    assert first["psi"] == second["psi"] and first["final_norm"] == "exclude"
    assert first["tokens"] == 96  # 2 rows of max_seq_len 48
    assert (out / "jump_profile.png").stat().st_size > 0


def test_missing_model_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope"
    assert jump_profile.main([str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
