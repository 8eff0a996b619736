"""prepare_data: exact packing, disjoint splits, the cache, and every bad input refused with its name."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

import pretrain.data.dataset as dataset_module
from pretrain.data import DataConfig, DataError, prepare_data
from pretrain.data.split import doc_hash, split_by_hash
from pretrain.data.tokenizer import EOS_ID


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def local_cfg(tmp_path: Path, source: Path | str, tokenizer: str, **kw) -> DataConfig:
    kw = {"seq_len": 32, "val_fraction": 0.2, "num_proc": 1, **kw}
    return DataConfig(source=str(source), tokenizer=tokenizer, cache_dir=str(tmp_path / "cache"), **kw)


def stream(texts: list[str], sp: spm.SentencePieceProcessor) -> np.ndarray:
    return np.concatenate([sp.encode(t) + [EOS_ID] for t in texts])


@pytest.mark.parametrize("num_proc", [1, 2])
def test_windows_are_the_token_stream_of_each_splits_documents(tmp_path, corpus_texts, tokenizer_path, vocab,
                                                               num_proc):
    texts = corpus_texts[:40]
    cfg = local_cfg(tmp_path, write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts]), tokenizer_path,
                    num_proc=num_proc, seq_len=48)
    data = prepare_data(cfg, vocab, seed=3)
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    split = split_by_hash(np.array([doc_hash(t, 3) for t in texts]), cfg.val_fraction)
    for name, windows in (("train", data.train), ("val", data.val)):
        expected = stream([texts[i] for i in split[name]], sp)
        assert windows.dtype == np.uint16 and windows.shape == (len(expected) // 49, 49)
        assert np.array_equal(windows.reshape(-1), expected[: windows.size])
        assert data.stats[f"{name}_docs"] == len(split[name]) and data.stats[f"{name}_tokens"] == len(expected)


def test_train_and_val_documents_never_overlap(embedded, corpus_texts):
    _, data = embedded
    sp = spm.SentencePieceProcessor(model_file=str(data.tokenizer_path))

    def documents(windows: np.ndarray) -> set[str]:
        pieces = np.split(windows.reshape(-1), np.flatnonzero(windows.reshape(-1) == EOS_ID) + 1)
        return {sp.decode(p[:-1].tolist()) for p in pieces[:-1]}  # the last piece is cut by the dropped tail

    train, val = documents(data.train), documents(data.val)
    assert val and train and not train & val
    assert (train | val) <= set(corpus_texts)


def test_split_is_by_content_and_keeps_duplicates_together():
    texts = [f"doc {i}" for i in range(100)] + ["doc 7"] * 3
    hashes = np.array([doc_hash(t, 0) for t in texts])
    split = split_by_hash(hashes, 0.1)
    assert 10 <= len(split["val"]) and not set(split["train"]) & set(split["val"])
    assert len(split["train"]) + len(split["val"]) == len(texts)
    sides = {name for name, idx in split.items() for i in idx if texts[i] == "doc 7"}
    assert len(sides) == 1
    reseeded = split_by_hash(np.array([doc_hash(t, 1) for t in texts]), 0.1)
    assert not np.array_equal(reseeded["val"], split["val"])


def test_second_call_hits_the_cache_and_a_key_change_rebuilds(tmp_path, corpus_texts, tokenizer_path, vocab):
    source = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus_texts[:20]])
    first = prepare_data(local_cfg(tmp_path, source, tokenizer_path), vocab)
    again = prepare_data(local_cfg(tmp_path, source, tokenizer_path), vocab)
    longer = prepare_data(local_cfg(tmp_path, source, tokenizer_path, seq_len=40), vocab)
    assert (first.stats["cache_hit"], again.stats["cache_hit"], longer.stats["cache_hit"]) == (False, True, False)
    assert np.array_equal(first.train, again.train) and longer.train.shape[1] == 41
    assert again.stats["build_seconds"] == first.stats["build_seconds"]  # read from the manifest, not rebuilt
    source.write_text(source.read_text() + json.dumps({"text": corpus_texts[25]}) + "\n")  # new size and mtime
    assert prepare_data(local_cfg(tmp_path, source, tokenizer_path), vocab).stats["cache_hit"] is False


@pytest.mark.parametrize("damage", ["truncate train.npy", "garble manifest.json", "shrink val.npy"])
def test_a_damaged_cache_is_named_removed_and_rebuilt(tmp_path, corpus_texts, tokenizer_path, vocab, caplog, damage):
    source = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus_texts[:20]])
    first = prepare_data(local_cfg(tmp_path, source, tokenizer_path), vocab)
    key_dir = Path(first.stats["cache_dir"])
    train = np.array(first.train)
    if damage == "truncate train.npy":
        (key_dir / "train.npy").write_bytes((key_dir / "train.npy").read_bytes()[:-100])
    elif damage == "garble manifest.json":
        (key_dir / "manifest.json").write_text('{"source": ')
    else:  # a valid array of the wrong shape, e.g. from another build copied over it
        np.save(key_dir / "val.npy", np.zeros((1, 3), dtype=np.uint16))
    again = prepare_data(local_cfg(tmp_path, source, tokenizer_path), vocab)
    assert again.stats["cache_hit"] is False and np.array_equal(np.array(again.train), train)
    assert f"cache {key_dir}" in caplog.text and "building it again" in caplog.text


def test_trained_tokenizer_is_reused_from_the_cache(embedded, vocab):
    cfg, first = embedded
    again = prepare_data(DataConfig(**{**vars(cfg)}), vocab)
    assert again.stats["cache_hit"] and again.tokenizer_path == first.tokenizer_path


def test_empty_records_are_skipped_and_counted(tmp_path, corpus_texts, tokenizer_path, vocab):
    records = [{"text": t} for t in corpus_texts[:12]] + [{"text": ""}, {"text": None}, {"text": " \n "}]
    data = prepare_data(local_cfg(tmp_path, write_jsonl(tmp_path / "c.jsonl", records), tokenizer_path), vocab)
    assert (data.stats["records"], data.stats["skipped_empty"]) == (15, 3)
    assert data.stats["train_docs"] + data.stats["val_docs"] == 12


def test_txt_parquet_and_a_list_of_files_load(tmp_path, corpus_texts, tokenizer_path, vocab):
    paragraphs = ["\n".join(line for line in t.splitlines() if line.strip()) for t in corpus_texts[:10]]
    (tmp_path / "a.txt").write_text("\n\n".join(paragraphs))
    pq.write_table(pa.table({"body": corpus_texts[10:20], "n": list(range(10))}), tmp_path / "b.parquet")
    txt = prepare_data(local_cfg(tmp_path, tmp_path / "a.txt", tokenizer_path), vocab)
    assert txt.stats["records"] == 10  # a .txt file is split into documents at blank lines
    par = prepare_data(local_cfg(tmp_path, tmp_path / "b.parquet", tokenizer_path, text_field="body"), vocab)
    assert par.stats["records"] == 10
    write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus_texts[20:25]])
    both = prepare_data(local_cfg(tmp_path, f"{tmp_path}/a.txt, {tmp_path}/*.jsonl", tokenizer_path), vocab)
    assert both.stats["records"] == 15


def test_missing_file_and_empty_glob_name_the_path(tmp_path, tokenizer_path, vocab):
    with pytest.raises(DataError, match=r"no such file .*nope\.jsonl"):
        prepare_data(local_cfg(tmp_path, tmp_path / "nope.jsonl", tokenizer_path), vocab)
    with pytest.raises(DataError, match=r"glob .*\*\.parquet.* matches no files"):
        prepare_data(local_cfg(tmp_path, tmp_path / "*.parquet", tokenizer_path), vocab)


def test_unsupported_extension_lists_the_supported_ones(tmp_path, tokenizer_path, vocab):
    (tmp_path / "c.csv").write_text("text\nhello\n")
    with pytest.raises(DataError, match=r"c\.csv.*'\.csv'.*\.txt, \.jsonl, \.json, \.parquet"):
        prepare_data(local_cfg(tmp_path, tmp_path / "c.csv", tokenizer_path), vocab)


@pytest.mark.parametrize("content", ["", '{"text": ""}\n{"text": null}\n'])
def test_a_corpus_without_text_is_refused(tmp_path, tokenizer_path, vocab, content):
    (tmp_path / "c.jsonl").write_text(content)
    with pytest.raises(DataError, match="holds no text"):
        prepare_data(local_cfg(tmp_path, tmp_path / "c.jsonl", tokenizer_path), vocab)


def test_missing_text_field_lists_the_fields(tmp_path, tokenizer_path, vocab):
    source = write_jsonl(tmp_path / "c.jsonl", [{"content": "x", "id": 1}])
    with pytest.raises(DataError, match=r"data.text_field='text'.*fields: content, id"):
        prepare_data(local_cfg(tmp_path, source, tokenizer_path), vocab)


def test_tokenizer_of_the_wrong_size_is_refused_before_loading(tmp_path, tokenizer_path, vocab, monkeypatch):
    def fail(*_):
        raise AssertionError("documents were loaded before the tokenizer was checked")

    monkeypatch.setattr(dataset_module, "load_documents", fail)
    source = write_jsonl(tmp_path / "c.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=rf"vocab size {vocab} but model.vocab_size=1000"):
        prepare_data(local_cfg(tmp_path, source, tokenizer_path), 1000)


def test_a_corpus_too_small_for_one_window_says_how_small(tmp_path, corpus_texts, tokenizer_path, vocab):
    source = write_jsonl(tmp_path / "c.jsonl", [{"text": t[:200]} for t in corpus_texts[:5]])
    with pytest.raises(DataError, match=r"corpus too small: the \w+ split has \d+ documents and \d+ tokens, "
                                        r"but one window needs data.seq_len \+ 1 = 1025"):
        prepare_data(local_cfg(tmp_path, source, tokenizer_path, seq_len=1024), vocab)


def test_a_build_that_loses_the_race_uses_the_winners_cache(tmp_path, corpus_texts, tokenizer_path, vocab,
                                                            monkeypatch):
    cfg = local_cfg(tmp_path, write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus_texts[:20]]),
                    tokenizer_path)
    first = prepare_data(cfg, vocab)
    real_load = dataset_module._load
    # every cache check misses, as for a process that looked before the other one finished
    monkeypatch.setattr(dataset_module, "_load", lambda *a, hit=True: None if hit else real_load(*a, hit=hit))
    second = prepare_data(cfg, vocab)
    assert np.array_equal(first.train, second.train) and np.array_equal(first.val, second.val)
    assert [p.name for p in (tmp_path / "cache" / "packed").iterdir()] == [Path(first.stats["cache_dir"]).name]


def test_a_file_datasets_cannot_parse_is_named_with_the_row(tmp_path):
    """datasets wraps the parser's error in "An error occurred while generating the dataset"; the parser's own
    words, which name the row, are what the user gets (issue 37)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken\n')
    cfg = DataConfig(source=str(bad), cache_dir=str(tmp_path / "cache"), num_proc=1)
    with pytest.raises(DataError, match=r"bad.jsonl' could not be read: ArrowInvalid: JSON parse error.*row 1"):
        prepare_data(cfg, 512)
