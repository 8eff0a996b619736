"""Tokenizer: code survives a round trip, ids are fixed, training is reproducible, sizes are checked."""
from __future__ import annotations

import hashlib

import pytest
import sentencepiece as spm

from pretrain.data import DataError
from pretrain.data.tokenizer import BOS_ID, EOS_ID, encode_batch, load_tokenizer, train_tokenizer


def test_round_trip_of_the_embedded_corpus(tokenizer_path, corpus_texts):
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    code = [t for t in corpus_texts if "\n    def " in t][:3] + ["    x = 1\n\n\tif x:\n\t\treturn 'é😀'  \r\n"]
    sample = corpus_texts[:20] + code
    assert [sp.decode(sp.encode(t)) for t in sample] == sample
    assert sp.unk_id() not in {i for t in sample for i in sp.encode(t)}
    assert any(set(p) == {"▁"} and len(p) >= 4 for p in sp.encode("        return x", out_type=str))


def test_special_ids_and_eos_without_bos(tokenizer_path):
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    out = encode_batch({"text": ["a b", "c"]}, tokenizer_path=tokenizer_path, text_field="text")
    assert all(ids[-1] == EOS_ID and BOS_ID not in ids for ids in out["ids"])
    assert out["num_tokens"] == [len(ids) for ids in out["ids"]]


def test_training_is_reproducible(tmp_path, corpus_texts):
    paths = [train_tokenizer(corpus_texts[:30], tmp_path / f"{i}.model", 400, "bpe") for i in range(2)]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 1


def test_vocab_mismatch_names_both_sizes_and_the_file(tokenizer_path, vocab):
    with pytest.raises(DataError) as err:
        load_tokenizer(tokenizer_path, vocab * 2)
    assert all(s in str(err.value) for s in (f"vocab size {vocab}", f"={vocab * 2}", tokenizer_path))


def test_vocab_too_large_for_the_corpus_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="vocab_size=5000"):
        train_tokenizer(["tiny corpus"] * 3, tmp_path / "t.model", 5000, "bpe")
