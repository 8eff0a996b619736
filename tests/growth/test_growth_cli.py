"""`python -m growth grow`: the folder it writes loads into the grown model, and bad input is refused by name
with nothing written."""
from __future__ import annotations

import json

import pytest
import torch

from growth.cli import main
from model import Llama, ModelConfig
from storage.weights import load_weights, save_weights

from growth_testlib import TINY, TOL, logits, random_model, state_of, tokens  # noqa: F401  (fixture)


@pytest.fixture
def source(tmp_path):
    """A weights folder of a tiny random Llama (what `grow --from` reads), with a tokenizer beside it."""
    model = random_model(TINY)
    folder = tmp_path / "small"
    save_weights(folder, TINY, state_of(model))
    (folder / "tokenizer.model").write_bytes(b"sentencepiece bytes")
    return folder, model


def grown_model(folder) -> Llama:
    cfg, state = load_weights(folder)
    model = Llama(cfg)
    model.load_state_dict(state, strict=True)
    return model


def test_zero_block_folder_loads_and_keeps_the_function(source, tmp_path, tokens, capsys):
    folder, small = source
    out = tmp_path / "grown"
    assert main(["grow", "--from", str(folder), "--op", "zero_block", "--to", "model.n_layers=4",
                 "--out", str(out), "--param", "seed=3"]) == 0
    big = grown_model(out)
    assert big.layers.__len__() == 4
    assert (logits(big, tokens) - logits(small, tokens)).abs().max().item() < TOL
    record = json.loads((out / "record.json").read_text())
    assert record["operator"] == "zero_block" and record["layer_map"] == [0, 1, None, None]
    assert record["source"] == str(folder.resolve()) and record["params"]["seed"] == 3
    assert (out / "tokenizer.model").read_bytes() == b"sentencepiece bytes"
    printed = capsys.readouterr().out
    assert f"train.init_from={out.resolve()}" in printed and "model.n_layers=4" in printed
    assert f"data.tokenizer={(out / 'tokenizer.model').resolve()}" in printed


def test_target_from_a_model_yaml_copies_the_mapped_layers(source, tmp_path):
    folder, small = source
    spec = tmp_path / "big.yaml"
    fields = {k: "null" if v is None else v for k, v in vars(TINY).items() if k != "n_layers"}
    spec.write_text("".join(f"{k}: {v}\n" for k, v in fields.items()) + "n_layers: 4\n")
    out = tmp_path / "stacked"
    assert main(["grow", "--from", str(folder), "--op", "stack", "--to", str(spec), "--out", str(out)]) == 0
    big = grown_model(out)
    for i, src in enumerate([0, 1, 0, 1]):
        for (name, p), q in zip(big.layers[i].named_parameters(), small.layers[src].parameters()):
            assert torch.equal(p, q), (i, name)


@pytest.mark.parametrize("args, message", [
    (["--from", "{tmp}/nowhere", "--op", "stack", "--to", "n_layers=4"], "nowhere' does not exist"),
    (["--op", "grow_sideways", "--to", "n_layers=4"], "unknown growth operator 'grow_sideways'; registered: fusion"),
    (["--op", "stack", "--to", "n_layers=1"], "n_layers=1 is smaller than the source's 2"),
    (["--op", "stack", "--to", "n_layers=4", "vocab_size=128"], "keeps model.vocab_size: source 64, target 128"),
    (["--op", "stack", "--to", "n_layrs=4"], "unknown model fields ['n_layrs']"),
    (["--op", "stack", "--to", "n_layers=8", "n_layers=6"], "--to sets ['n_layers'] more than once"),  # issue 51
    (["--op", "stack", "--to", "no_such_preset"], "neither a YAML file nor a model preset; presets: ['125m'"),
    (["--op", "stack_middle", "--to", "n_layers=4", "--param", "colour=red"],
     "'stack_middle' takes no parameter ['colour']; its parameters: ['block']"),
    (["--op", "stack", "--to", "n_layers=2"], "is the source's own shape (2 layers, dim 32): nothing to grow"),
])
def test_bad_input_names_the_problem_and_writes_nothing(source, tmp_path, capsys, args, message):
    folder, _ = source
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--from" not in args:
        args = ["--from", str(folder), *args]
    out = tmp_path / "out"
    assert main(["grow", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_output_path_that_is_a_file_is_refused(source, tmp_path, capsys):
    folder, _ = source
    (tmp_path / "out").write_text("mine")
    assert main(["grow", "--from", str(folder), "--op", "stack", "--to", "n_layers=4", "--out",
                 str(tmp_path / "out")]) == 2
    assert "exists and is a file" in capsys.readouterr().err and (tmp_path / "out").read_text() == "mine"


def test_a_garbled_manifest_is_named_not_a_traceback(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints" / "step_2"
    ckpt.mkdir(parents=True)
    (ckpt / "manifest.json").write_text("{not json")
    assert main(["grow", "--from", str(ckpt), "--op", "stack", "--to", "n_layers=4", "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json is damaged" in err[0] and not (tmp_path / "out").exists()


def test_an_existing_output_folder_is_never_overwritten(source, tmp_path, capsys):
    folder, _ = source
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["grow", "--from", str(folder), "--op", "stack", "--to", "n_layers=4", "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_grown_shape_from_overrides_keeps_the_source_fields(source, tmp_path):
    folder, _ = source
    out = tmp_path / "wide"
    assert main(["grow", "--from", str(folder), "--op", "net2net", "--to", "dim=64", "n_heads=8", "ffn_dim=96",
                 "--out", str(out)]) == 0
    cfg = ModelConfig(**json.loads((out / "model_config.json").read_text()))
    assert (cfg.dim, cfg.n_heads, cfg.ffn_dim, cfg.n_layers, cfg.vocab_size) == (64, 8, 96, 2, TINY.vocab_size)
