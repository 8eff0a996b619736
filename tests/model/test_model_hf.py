"""Hugging Face parity: our Llama and transformers' LlamaForCausalLM compute the same function after conversion."""
from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from model import Llama, ModelConfig
from model.hf import (
    from_hf_config,
    from_hf_state_dict,
    load_hf_folder,
    save_hf_folder,
    to_hf_config,
    to_hf_state_dict,
)

TOL = 1e-4


def small_cfg(tie: bool) -> ModelConfig:
    return ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=128,
                       max_seq_len=32, tie_embeddings=tie, rope_theta=5e5)


def perturb_norms(module: torch.nn.Module) -> None:
    """Norm gains start at 1, which would hide a swapped attention_norm/ffn_norm mapping."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)


def our_model(cfg: ModelConfig, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    m = Llama(cfg).eval()
    perturb_norms(m)
    return m


@pytest.mark.parametrize("tie", [False, True])
def test_export_to_hf_matches_logits(tie: bool) -> None:
    cfg = small_cfg(tie)
    ours = our_model(cfg)
    hf = LlamaForCausalLM(to_hf_config(cfg)).eval()
    hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=True)
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tie
    tokens = torch.randint(0, cfg.vocab_size, (3, cfg.max_seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(tokens).logits - hf(tokens).logits).abs().max().item()
    assert diff < TOL


@pytest.mark.parametrize("tie", [False, True])
def test_import_from_hf_matches_logits(tie: bool) -> None:
    hf_cfg = to_hf_config(small_cfg(tie))
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_cfg).eval()
    perturb_norms(hf)
    cfg = from_hf_config(hf.config)
    ours = Llama(cfg).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict()), strict=True)
    assert (ours.output.weight is ours.tok_embeddings.weight) == tie
    tokens = torch.randint(0, cfg.vocab_size, (3, cfg.max_seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(tokens).logits - hf(tokens).logits).abs().max().item()
    assert diff < TOL


def test_config_round_trip_and_special_ids() -> None:
    cfg = small_cfg(True)
    hf_cfg = to_hf_config(cfg)
    assert from_hf_config(hf_cfg) == cfg
    assert (hf_cfg.bos_token_id, hf_cfg.eos_token_id, hf_cfg.pad_token_id) == (1, 2, None)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, "rope_type='linear'"),
        ({"mlp_bias": True}, "mlp_bias=True"),
    ],
)
def test_from_hf_config_refuses_what_we_cannot_compute(override: dict, field: str) -> None:
    kwargs = {**to_hf_config(small_cfg(False)).to_dict(), **override}
    with pytest.raises(ValueError, match=field):
        from_hf_config(LlamaConfig(**kwargs))


def train_tokenizer(tmp_path: Path, model_type: str = "bpe", add_dummy_prefix: bool = False) -> Path:
    """A sentencepiece model with the settings growlm's tokenizer uses (pretrain/data/tokenizer.py)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(inspect.getsource(textwrap))
    prefix = tmp_path / f"sp_{model_type}_{add_dummy_prefix}"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=400, model_type=model_type,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix,
        normalization_rule_name="identity", minloglevel=2,
    )
    return prefix.with_suffix(".model")


def greedy(model: Llama, prompt: torch.Tensor, n_new: int, eos_id: int) -> torch.Tensor:
    """Our own greedy decoding, stopping after eos as HF's generate does."""
    seq = prompt
    for _ in range(n_new):
        with torch.no_grad():
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
        if nxt.item() == eos_id:
            break
    return seq


@pytest.mark.numerics
@pytest.mark.parametrize("tie", [False, True])
def test_saved_folder_loads_and_generates_our_greedy_continuation(tmp_path: Path, tie: bool) -> None:
    cfg = small_cfg(tie)
    ours = our_model(cfg)
    folder = save_hf_folder(ours.state_dict(), cfg, tmp_path / "hf", tokenizer_files={"tokenizer.model": train_tokenizer(tmp_path)})
    hf = LlamaForCausalLM.from_pretrained(folder).eval()
    assert hf.dtype == torch.float32
    assert (hf.generation_config.bos_token_id, hf.generation_config.eos_token_id) == (1, 2)
    prompt = torch.tensor([[1, 17, 42, 99, 5, 63]])
    generated = hf.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(generated, greedy(ours, prompt, 8, eos_id=2))


@pytest.mark.parametrize("add_dummy_prefix", [False, True])
def test_saved_tokenizer_matches_sentencepiece(tmp_path: Path, add_dummy_prefix: bool) -> None:
    sp_path = train_tokenizer(tmp_path, add_dummy_prefix=add_dummy_prefix)
    cfg = small_cfg(True)
    folder = save_hf_folder(our_model(cfg).state_dict(), cfg, tmp_path / "hf", tokenizer_files={"tokenizer.model": sp_path})
    tok = LlamaTokenizer.from_pretrained(folder)
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == sp.get_piece_size()
    texts = ["def wrap(text, width=70):\n    return  text", "digits 12345 é 漢\t\n"]
    if not add_dummy_prefix:  # with a dummy prefix, HF adds no second "▁" before leading whitespace; spm does
        texts.append("  leading spaces")
    for text in texts:
        ids = sp.encode(text)
        assert tok(text).input_ids == ids  # no bos added: training packs documents without one
        assert tok.decode(ids) == sp.decode(ids)


def test_unigram_tokenizer_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    sp_path = train_tokenizer(tmp_path, model_type="unigram")
    cfg = small_cfg(True)
    with pytest.raises(ValueError, match="BPE"):
        save_hf_folder(our_model(cfg).state_dict(), cfg, tmp_path / "hf", tokenizer_files={"tokenizer.model": sp_path})
    assert not (tmp_path / "hf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf")]


@pytest.mark.parametrize("tie", [False, True])
def test_load_hf_folder_round_trips_weights(tmp_path: Path, tie: bool) -> None:
    cfg = small_cfg(tie)
    sd = our_model(cfg).state_dict()
    loaded_cfg, loaded = load_hf_folder(save_hf_folder(sd, cfg, tmp_path / "hf"))
    assert loaded_cfg == cfg
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_load_hf_folder_reads_sharded_checkpoints(tmp_path: Path) -> None:
    cfg = small_cfg(False)
    hf = LlamaForCausalLM(to_hf_config(cfg))
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    loaded_cfg, loaded = load_hf_folder(tmp_path / "sharded")
    expected = from_hf_state_dict(hf.state_dict())
    assert loaded_cfg == cfg
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_overwrite_replaces_an_earlier_export_and_nothing_else(tmp_path: Path) -> None:
    """A user's folder (never an export) survives --overwrite byte for byte, mode included (issue 37's data loss);
    an earlier export is replaced, and no temp or old folder is left beside it."""
    cfg = small_cfg(True)
    out = tmp_path / "hf"
    out.mkdir(mode=0o755)
    (out / "notes.txt").write_text("precious")
    (out / "data.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_hf_folder(our_model(cfg).state_dict(), cfg, out)
    with pytest.raises(FileExistsError, match=r"\['data.json', 'notes.txt'\] and no .growlm-export.json"):
        save_hf_folder(our_model(cfg).state_dict(), cfg, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and out.stat().st_mode & 0o777 == 0o755

    export = tmp_path / "export"
    save_hf_folder(our_model(cfg).state_dict(), cfg, export)
    first = (export / "model.safetensors").read_bytes()
    save_hf_folder({k: v + 1 for k, v in our_model(cfg).state_dict().items()}, cfg, export, overwrite=True)
    assert (export / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "hf"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert export.stat().st_mode & 0o777 == fresh.stat().st_mode & 0o777  # not mkdtemp's 0700


def test_an_existing_file_as_the_export_folder_is_refused(tmp_path: Path) -> None:
    cfg = small_cfg(True)
    target = tmp_path / "model.bin"
    target.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        save_hf_folder(our_model(cfg).state_dict(), cfg, target, overwrite=True)
    assert target.read_bytes() == b"x"


def test_failed_save_leaves_nothing_behind(tmp_path: Path) -> None:
    cfg = small_cfg(True)
    with pytest.raises(FileNotFoundError):
        save_hf_folder(our_model(cfg).state_dict(), cfg, tmp_path / "hf", tokenizer_files={"tokenizer.model": tmp_path / "missing.model"})
    assert list(tmp_path.iterdir()) == []


def test_overwrite_never_replaces_a_run_or_checkpoints(tmp_path: Path) -> None:
    """--overwrite replaces an earlier export, not a folder a user pointed at by mistake (a run, checkpoints)."""
    cfg = small_cfg(True)
    run = tmp_path / "run"
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "config.json").write_text("{}")
    (run / ".growlm-export.json").write_text("{}")  # even beside a marker (an export later filled with run files)
    with pytest.raises(FileExistsError, match=r"\['checkpoints', 'metrics.jsonl'\]"):
        save_hf_folder(our_model(cfg).state_dict(), cfg, run, overwrite=True)
    assert (run / "checkpoints" / "step_2").is_dir() and (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_overwrite_keeps_a_file_the_user_added_to_an_export(tmp_path: Path) -> None:
    """The marker lists what the export wrote: a user's notes beside it (even a .txt or .json, kinds an HF
    folder holds) make --overwrite refuse, naming them (the audit's case o6 deleted them)."""
    cfg = small_cfg(True)
    export = save_hf_folder(our_model(cfg).state_dict(), cfg, tmp_path / "export")
    (export / "notes.txt").write_text("precious")
    (export / "eval.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"holds \['eval.json', 'notes.txt'\], which an export does not"):
        save_hf_folder(our_model(cfg).state_dict(), cfg, export, overwrite=True)
    assert (export / "notes.txt").read_text() == "precious"
