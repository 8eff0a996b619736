"""Open-weight folders in: an HF Llama folder (bf16, sharded, tied, GQA, head_dim != dim/heads, Llama-3 RoPE)
and its HF tokenizer become growlm's model, data and exported folders without changing the function."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import Llama
from pretrain.config import ConfigError, load_config
from pretrain.data import DataError, prepare_data
from storage import folders, weights
from storage.export import main as export_main

from hf_folders import BOS, EOS, open_weight_folder, save_hf_llama, train_hf_tokenizer

TOKENS = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(0))


def hf_logits(folder: Path, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def our_logits(cfg, state, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    model = Llama(cfg).eval()
    model.load_state_dict(dict(state))
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_hf_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize(("tie", "dtype", "shard"), [(False, torch.float32, False), (True, torch.bfloat16, True),
                                                     (False, torch.float16, True)])
def test_hf_folder_loads_as_the_same_function(tmp_path, tie, dtype, shard):
    folder = save_hf_llama(tmp_path, 512, tie=tie, dtype=dtype, shard=shard)
    assert shard == (tmp_path / "model.safetensors.index.json").is_file()
    cfg, state = weights.load_weights(folder)
    assert (cfg.head_dim, cfg.head_width, cfg.tie_embeddings, cfg.rope_scaling.factor) == (24, 24, tie, 4.0)
    assert torch.allclose(our_logits(cfg, state), hf_logits(folder), atol=1e-5, rtol=0)
    lazy_cfg, lazy = weights.load_weights(folder, lazy=True)  # what a ZeRO-3 run reads tensor by tensor
    assert lazy_cfg == cfg and set(lazy) == set(state)
    assert all(torch.equal(lazy[name], state[name]) for name in state)


def test_llama3_rope_scaling_matters_and_matches_transformers(tmp_path):
    """Parity above would also hold if both ignored the scaling: the plain-RoPE model computes otherwise."""
    import dataclasses

    folder = save_hf_llama(tmp_path, 512)
    cfg, state = weights.load_weights(folder)
    plain = our_logits(dataclasses.replace(cfg, rope_scaling=None), state)
    assert (plain - hf_logits(folder)).abs().max() > 1e-3


def test_model_may_name_an_hf_folder(tmp_path):
    folder = save_hf_llama(tmp_path / "m", 512, tie=True)
    cfg = load_config(None, [f"model={folder}", "data.seq_len=32"])
    hf = json.loads((folder / "config.json").read_text())
    assert (cfg.model.dim, cfg.model.n_layers, cfg.model.n_kv_heads, cfg.model.head_dim, cfg.model.ffn_dim,
            cfg.model.vocab_size, cfg.model.max_seq_len, cfg.model.tie_embeddings) == (
        hf["hidden_size"], hf["num_hidden_layers"], hf["num_key_value_heads"], hf["head_dim"],
        hf["intermediate_size"], hf["vocab_size"], hf["max_position_embeddings"], True)
    assert cfg.model.rope_scaling.original_max_position_embeddings == 16 and cfg.model.rope_theta == 5e5


@pytest.mark.parametrize(("change", "message"), [
    ({"model_type": "mistral"}, "model_type='mistral'"),
    ({"attention_bias": True}, "attention_bias=True"),
    ({"mlp_bias": True}, "mlp_bias=True"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_type='yarn'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_parameters": None}, "rope_type='linear'"),
    ({"sliding_window": 4096}, "sliding_window=4096"),
])
def test_unsupported_features_are_refused_naming_key_and_value(tmp_path, change, message):
    folder = save_hf_llama(tmp_path / "m", 512)
    raw = json.loads((folder / "config.json").read_text()) | change
    (folder / "config.json").write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    with pytest.raises(ConfigError, match=f"model=.*{message}"):
        load_config(None, [f"model={folder}"])
    with pytest.raises(folders.CheckpointError, match=message):
        weights.load_weights(folder)


@pytest.mark.parametrize("form", ["folder", "tokenizer.json"])
def test_hf_tokenizer_packs_bos_doc_eos(tmp_path, tokenizer_dir, form):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    given = tokenizer_dir if form == "folder" else tokenizer_dir / "tokenizer.json"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tokenizer_dir.iterdir())
    cfg = load_config(None, [f"data.tokenizer={given}", f"model.vocab_size={len(tok)}",
                             f"data.cache_dir={tmp_path}", "data.embedded_max_bytes=60000", "data.seq_len=64"])
    data = prepare_data(cfg.data, cfg.model.vocab_size)
    ids = torch.from_numpy(data.train[:].astype("int64")).flatten()
    bos, eos = tok.convert_tokens_to_ids(BOS), tok.convert_tokens_to_ids(EOS)
    starts = (ids[:-1] == eos).nonzero().flatten() + 1
    assert len(starts) > 5 and bool((ids[starts] == bos).all())  # every document after a boundary opens with BOS
    assert int(ids.max()) < len(tok)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tokenizer_dir.iterdir()) == before  # never rewritten


def test_hf_tokenizer_refusals(tmp_path, tokenizer_dir):
    with pytest.raises(DataError, match=r"vocab size 512 but model.vocab_size=4096"):
        prepare_data(load_config(None, [f"data.tokenizer={tokenizer_dir}", f"data.cache_dir={tmp_path}"]).data, 4096)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    with pytest.raises(DataError, match="without a tokenizer_config.json"):
        prepare_data(load_config(None, [f"data.tokenizer={bare / 'tokenizer.json'}",
                                        f"data.cache_dir={tmp_path}"]).data, 512)


def test_export_round_trip_keeps_logits_and_tokenizer(tmp_path):
    """A folder read into growlm and exported again (as a run from it does at step 0) is the same model."""
    from transformers import AutoTokenizer

    source = open_weight_folder(tmp_path / "src", tie=True, dtype=torch.bfloat16, shard=True)
    export = export_main
    assert export([str(source), str(tmp_path / "out")]) == 0
    assert torch.allclose(hf_logits(tmp_path / "out"), hf_logits(source), atol=1e-5, rtol=0)
    text = "def f(x):\n    return x + 1\n"
    assert AutoTokenizer.from_pretrained(tmp_path / "out")(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(source)(text)["input_ids"]
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (exported["bos_token_id"], exported["eos_token_id"]) == (0, 1)


def test_export_refuses_bad_targets_and_sources_before_any_work(tmp_path, capsys):
    """One `error:` line naming the problem, exit 2, nothing written (issue 37's export cases)."""
    source = open_weight_folder(tmp_path / "src", tie=True)
    export = export_main
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    (tmp_path / "file").write_text("x")
    cases = [([str(source), str(user), "--overwrite"], "no .growlm-export.json"),
             ([str(source), str(tmp_path / "file")], "is a file, not a folder"),
             ([str(source / "model.safetensors"), str(tmp_path / "new")], "is a file, not a checkpoint folder")]
    capsys.readouterr()  # the source folder's own progress output
    for argv, message in cases:
        before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
        assert export(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
        assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (user / "notes.txt").read_text() == "precious"


def test_zero_block_growth_from_an_hf_folder_preserves_logits(tmp_path):
    from growth.cli import main as growth_main

    source = open_weight_folder(tmp_path / "src", tie=False)
    assert growth_main(["grow", "--from", str(source), "--op", "zero_block", "--to", "model.n_layers=4",
                        "--out", str(tmp_path / "grown")]) == 0
    cfg, state = weights.load_weights(tmp_path / "grown")
    assert cfg.n_layers == 4 and cfg.head_dim == 24 and cfg.rope_scaling is not None
    assert torch.allclose(our_logits(cfg, state), hf_logits(source), atol=1e-5, rtol=0)
    assert (tmp_path / "grown" / "tokenizer.json").is_file()  # the source's tokenizer travels with it


def test_peeling_reads_an_hf_folder_with_its_own_tokenizer(tmp_path):
    import inspect

    from pretrain.probes.peeling.__main__ import main as peel

    source = open_weight_folder(tmp_path / "models" / "llama")
    (tmp_path / "corpus.txt").write_text(inspect.getsource(__import__("argparse")))
    (tmp_path / "run.yaml").write_text(f"data: {{source: {tmp_path / 'corpus.txt'}, seq_len: 32, num_proc: 1, "
                                       f"val_fraction: 0.2, cache_dir: {tmp_path / 'cache'}}}\n")
    assert peel(["--checkpoint", str(source), "--config", str(tmp_path / "run.yaml"), "--variants", "fp",
                 "--steps", "2", "--calib-windows", "2", "--batch-windows", "2", "--threads", "1"]) == 0
    bounds = json.loads((tmp_path / "models" / "jobs" / "peeling" / "llama" / "bounds.json").read_text())
    assert bounds["rows"] and bounds["model_loss"] > 0
    assert not (tmp_path / "cache" / "tokenizers").exists()  # no tokenizer trained: the folder's own was used


def test_grown_runs_get_the_folder_shape_back_as_overrides(tmp_path):
    """growth and LAG pin each run's model by overrides; head_dim and the RoPE scaling must survive them."""
    from growth.folders import model_overrides

    cfg, _ = weights.load_weights(save_hf_llama(tmp_path, 512, tie=True))
    assert load_config(None, [*model_overrides(cfg), "data.seq_len=32"]).model == cfg
    plain = load_config(None, []).model  # head_dim and rope_scaling unset
    assert load_config(None, model_overrides(plain)).model == plain
