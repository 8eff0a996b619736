"""GGUF in (storage/gguf.py): a tiny GGUF written in-process converts to a transformers folder that computes what
the original model computes and tokenizes as it does; other architectures, quantizations gguf cannot
dequantize, files that are not GGUF and foreign output folders are refused naming them."""
from __future__ import annotations

import pytest
import torch

from model import ModelConfig
from storage.gguf import MARKER, GgufError, convert, inspect, main
from storage.weights import load_weights

from gguf_files import write_gguf
from hf_folders import open_weight_folder

TEXT = "def main(): return the answer to the question"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    hf = open_weight_folder(root / "hf", rope={"rope_type": "default", "rope_theta": 10000.0}, head_dim=None)
    return hf, write_gguf(hf, root / "tiny.gguf")


def test_a_converted_gguf_computes_and_tokenizes_as_the_original_model(source, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf, gguf_file = source
    out = convert(gguf_file, tmp_path / "out")
    original, converted = (AutoModelForCausalLM.from_pretrained(d).eval() for d in (hf, out))
    ids = AutoTokenizer.from_pretrained(hf)(TEXT)["input_ids"]
    assert AutoTokenizer.from_pretrained(out)(TEXT, add_special_tokens=False)["input_ids"] == ids[1:]
    tokens = torch.tensor([ids])
    torch.testing.assert_close(converted(tokens).logits, original(tokens).logits, rtol=0, atol=1e-5)
    cfg, state = load_weights(out)  # growlm reads it as any HF folder
    assert isinstance(cfg, ModelConfig) and cfg.n_layers == 2 and cfg.n_kv_heads == 2
    assert (out / MARKER).is_file()
    written = sorted(p.name for p in out.iterdir())
    convert(gguf_file, out)  # its own folder: converted again in place
    assert sorted(p.name for p in out.iterdir()) == written


def test_converting_again_keeps_a_file_the_user_added(source, tmp_path, capsys):
    """Issue 51: converting again after adding NOTES.md replaced the folder and deleted the notes, silently."""
    _, gguf_file = source
    out = convert(gguf_file, tmp_path / "out")
    (out / "NOTES.md").write_text("what I measured")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([str(gguf_file), str(out)]) == 2
    assert "holds ['NOTES.md'], which an export does not write" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_other_architectures_and_quantizations_are_refused_naming_them(source, tmp_path):
    hf, _ = source
    with pytest.raises(GgufError, match=r"architecture 'qwen2' is not one growlm computes; valid: \['llama'\]"):
        inspect(write_gguf(hf, tmp_path / "qwen.gguf", arch="qwen2"))
    with pytest.raises(GgufError, match=r"blk.0.attn_q.weight is quantized as Q8_1, which the gguf package cannot"):
        inspect(write_gguf(hf, tmp_path / "q81.gguf", quant="Q8_1"))
    assert inspect(write_gguf(hf, tmp_path / "q80.gguf", quant="Q8_0"))["tensor_types"] == ["F32", "Q8_0"]


def test_bad_input_is_one_error_line_and_writes_nothing(source, tmp_path, capsys):
    _, gguf_file = source
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("a user's file")
    for argv, named in (([str(tmp_path / "missing.gguf"), str(tmp_path / "o")], "missing.gguf does not exist"),
                        ([str(gguf_file.parent), str(tmp_path / "o")], "is a folder; give the .gguf file itself (it "
                                                                        "holds ['tiny.gguf'])"),  # issue 51
                        ([str(notes), str(tmp_path / "o")], "notes.txt is not a readable GGUF file"),
                        ([str(gguf_file), str(mine)], "holds ['keep.txt'] and no .growlm-gguf")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and named in err, err
    assert not (tmp_path / "o").exists() and sorted(p.name for p in mine.iterdir()) == ["keep.txt"]
