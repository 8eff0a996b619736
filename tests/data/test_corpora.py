"""Pre-tokenized corpora: prepare (parallel, resumable), growlm shards and Megatron .bin/.idx through memory
maps, weighted mixtures (proportions, exact resume, rank sharding) and their refusals."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from pretrain.config import ConfigError, load_config
from pretrain.data import DataError
from pretrain.data.__main__ import main as data_main
from pretrain.data.corpora import prepare_mixture
from pretrain.data.mixture import MixtureSampler, MixtureSource, Permutation
from pretrain.data.shards import open_corpus
from pretrain.data.tokenizer import EOS_ID


def write_megatron(prefix: Path, tokens: np.ndarray) -> Path:
    """A Megatron-LM MMIDIDX pair: uint16 tokens in .bin, the header (magic, version, dtype code 8) in .idx."""
    prefix.with_suffix(".bin").write_bytes(tokens.astype(np.uint16).tobytes())
    with open(prefix.with_suffix(".idx"), "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<QB", 1, 8) + struct.pack("<QQ", 1, 2))
        f.write(np.array([len(tokens)], np.int32).tobytes() + np.zeros(1, np.int64).tobytes()
                + np.array([0, 1], np.int64).tobytes())
    return prefix


def corpus_file(embedded) -> str:
    """The session's 300 KB embedded corpus as the jsonl file the text path read."""
    return str(next(Path(embedded[0].cache_dir, "corpus").glob("*.jsonl")))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, embedded, tokenizer_path) -> Path:
    cfg, _ = embedded
    out = tmp_path_factory.mktemp("shards") / "pydoc"
    assert data_main(["prepare", corpus_file(embedded), "--tokenizer", tokenizer_path, "--out", str(out), "--shards", "4",
                      "--procs", "2", "--cache-dir", cfg.cache_dir, "--val-fraction", "0.1"]) == 0
    return out


@pytest.mark.process
def test_prepare_writes_every_document_once_and_resumes_only_the_missing_shards(shards, embedded, tokenizer_path,
                                                                               capsys):
    cfg, packed = embedded
    meta = json.loads((shards / "meta.json").read_text())
    assert meta["num_shards"] == 4 and meta["vocab_size"] == 512 and (shards / "tokenizer.model").is_file()
    arrays = [np.load(shards / split / f"shard_{i:05d}.npy") for split in ("train", "val") for i in range(4)]
    total = sum(len(a) for a in arrays)
    docs = sum(int((a == EOS_ID).sum()) for a in arrays)  # every document ends in exactly one EOS
    assert total == packed.stats["train_tokens"] + packed.stats["val_tokens"]  # the same tokens as the text path
    assert docs == packed.stats["train_docs"] + packed.stats["val_docs"]
    before = {p: p.stat().st_mtime_ns for p in (shards / "train").iterdir()}
    (shards / "train" / "shard_00002.npy").unlink()  # as if killed while shard 2 was being written
    capsys.readouterr()
    assert data_main(["prepare", corpus_file(embedded), "--tokenizer", tokenizer_path, "--out", str(shards),
                      "--shards", "4", "--procs", "1", "--cache-dir", cfg.cache_dir, "--val-fraction", "0.1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["shards_written"], report["shards_kept"]) == (1, 3)
    after = {p: p.stat().st_mtime_ns for p in (shards / "train").iterdir()}
    assert [p.name for p in after if after[p] != before.get(p)] == ["shard_00002.npy"]
    assert np.array_equal(np.load(shards / "train" / "shard_00002.npy"), arrays[2])  # deterministic


@pytest.mark.process
def test_prepare_refuses_other_settings_into_the_same_directory(shards, embedded, tokenizer_path, capsys):
    assert data_main(["prepare", corpus_file(embedded), "--tokenizer", tokenizer_path, "--out", str(shards),
                      "--shards", "8",
                      "--cache-dir", embedded[0].cache_dir, "--val-fraction", "0.1"]) == 2
    assert "num_shards: 4 -> 8" in capsys.readouterr().err


def test_prepare_never_writes_into_a_folder_of_someone_elses(embedded, tokenizer_path, tmp_path, capsys):
    """Refused before the corpus is read: nothing is written beside the user's files (issue 37)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (tmp_path / "file").write_text("x")
    for out, message in ((mine, "holds ['notes.txt'] and no meta.json"), (tmp_path / "file", "is a file")):
        assert data_main(["prepare", corpus_file(embedded), "--tokenizer", tokenizer_path, "--out", str(out),
                          "--cache-dir", embedded[0].cache_dir]) == 2
        assert message in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (tmp_path / "file").read_text() == "x"


@pytest.mark.process
def test_megatron_files_read_as_the_same_windows(tmp_path, shards):
    tokens = np.load(shards / "train" / "shard_00000.npy")
    corpus = open_corpus(str(write_megatron(tmp_path / "web", tokens)), val_fraction=0.25)
    train, val = corpus.windows(65)
    n = len(tokens) // 65
    assert len(train) + len(val) == n and len(val) == n - int(n * 0.75)
    assert np.array_equal(train[[0, 3]], tokens[:65 * 4].reshape(4, 65)[[0, 3]])
    assert np.array_equal(val[0], tokens[65 * int(n * 0.75):][:65])


def test_permutation_is_a_bijection_and_seeded():
    for n in (1, 2, 7, 1000, 4097):
        perm = Permutation(n, (0, 1, 2))(np.arange(n))
        assert sorted(perm.tolist()) == list(range(n))
    a, b = Permutation(1000, (0, 0, 0))(np.arange(1000)), Permutation(1000, (1, 0, 0))(np.arange(1000))
    assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(1000))


def sources(*weights: float) -> list[MixtureSource]:
    return [MixtureSource(f"s{i}", 1000 + 100 * i, w) for i, w in enumerate(weights)]


def test_mixture_proportions_follow_the_weights():
    sampler = MixtureSampler(sources(3.0, 1.0, 0.0), 8, 2, 2, 0, seed=0)
    for _ in range(500):
        sampler.next_step()
    drawn = np.array(sampler.drawn) / sum(sampler.drawn)  # 16,000 windows
    assert abs(drawn[0] - 0.75) < 0.02 and abs(drawn[1] - 0.25) < 0.02 and drawn[2] == 0


def test_mixture_ranks_partition_the_global_batch_and_resume_exactly():
    def batches(sampler, steps):
        return [np.concatenate(sampler.next_step()) for _ in range(steps)]

    ranks = [MixtureSampler(sources(1.0, 2.0), 4, 2, 2, r, seed=3) for r in range(2)]
    one = MixtureSampler(sources(1.0, 2.0), 4, 4, 1, 0, seed=3)  # same global batch on one rank
    for step in range(300):  # crosses source epochs (1000 and 1100 windows)
        got = np.sort(np.concatenate([np.concatenate(r.next_step()) for r in ranks]))
        assert np.array_equal(got, np.sort(np.concatenate(one.next_step()))), step
    state = ranks[0].state_dict()
    resumed = MixtureSampler(sources(1.0, 2.0), 4, 2, 2, 0, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # it travels in the checkpoint as JSON-able data
    assert all(np.array_equal(a, b) for a, b in zip(batches(resumed, 20), batches(ranks[0], 20)))


def test_an_epoch_of_a_source_visits_each_window_once():
    sampler = MixtureSampler([MixtureSource("only", 96, 1.0)], 4, 2, 1, 0, seed=1)
    seen = np.concatenate([np.concatenate(sampler.next_step()) for _ in range(12)])  # 96 windows
    assert sorted(seen.tolist()) == list(range(96))


@pytest.mark.process
def test_mixture_refusals(tmp_path, shards, embedded):
    with pytest.raises(ConfigError, match="must sum to a positive number"):
        load_config(None, [f"data.sources=[{{path: {shards}, weight: 0}}]"])
    with pytest.raises(ConfigError, match=r"format='arrow'.*valid"):
        load_config(None, [f"data.sources=[{{path: {shards}, format: arrow}}]"])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt' is raw text: tokenize it once"):
        open_corpus(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a growlm shard directory .* nor Megatron"):
        open_corpus(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="nowhere' does not exist"):
        open_corpus(str(tmp_path / "nowhere"))
    cfg = load_config(None, [f"data.sources=[{{path: {shards}}}]", "model.vocab_size=512", "data.seq_len=64"])
    with pytest.raises(DataError, match="vocab size 512 but model.vocab_size=600"):
        prepare_mixture(cfg.data, 600)
    big = write_megatron(tmp_path / "big", np.array([5, 7, 9000, 3] * 100))
    ext = load_config(None, [f"data.sources=[{{path: {big}}}]", f"data.tokenizer={shards / 'tokenizer.model'}",
                             "data.seq_len=32"])
    with pytest.raises(DataError, match="token id 9000 >= model.vocab_size=512"):
        prepare_mixture(ext.data, 512)
    empty = write_megatron(tmp_path / "empty", np.array([], dtype=np.uint16))
    cfg = load_config(None, [f"data.sources=[{{path: {shards}}}, {{path: {empty}}}]", "data.seq_len=64"])
    with pytest.raises(DataError, match="no validation window"):
        prepare_mixture(cfg.data, 512)
    foreign = shards / "val" / "shard_00001.npy"
    original = foreign.read_bytes()
    np.save(foreign, np.load(foreign).astype(np.uint32))
    try:
        with pytest.raises(DataError, match="holds uint32 token ids, but .* says uint16"):
            open_corpus(str(shards))
    finally:
        foreign.write_bytes(original)
    (shards / "val" / "shard_00003.npy").rename(tmp_path / "moved.npy")
    try:
        (shards / "train" / "shard_00003.npy").rename(tmp_path / "moved_train.npy")
        with pytest.raises(DataError, match=r"incomplete: shards \[3\]"):
            open_corpus(str(shards))
    finally:
        (tmp_path / "moved.npy").rename(shards / "val" / "shard_00003.npy")
        (tmp_path / "moved_train.npy").rename(shards / "train" / "shard_00003.npy")


@pytest.mark.process
def test_windows_read_the_right_tokens_with_few_files_open(shards, monkeypatch):
    from pretrain.data import shards as shard_module

    monkeypatch.setattr(shard_module, "MAX_OPEN", 2)
    train, _ = open_corpus(str(shards)).windows(65)
    flat = [np.load(shards / "train" / f"shard_{i:05d}.npy") for i in range(4)]
    expected = np.concatenate([a[:len(a) // 65 * 65].reshape(-1, 65) for a in flat])
    idx = np.random.default_rng(0).permutation(len(train))[:200]
    assert np.array_equal(train[idx], expected[idx]) and len(train) == len(expected)
    assert len(train._fds) <= 2
