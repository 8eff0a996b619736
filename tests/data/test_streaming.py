"""Streaming: a source read with `datasets` streaming, tokenized and packed on the fly, each rank its own part,
resumable to the same next batch (in-process, and on 2 ranks through the launcher)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from launching import launch, losses
from pretrain.data import DataConfig, DataError, prepare_data
from pretrain.data.streaming import StreamSampler, TokenStream


@pytest.fixture(scope="module")
def stream_source(tmp_path_factory) -> Path:
    """pydoc topics as 4 jsonl files (streaming splits whole files between ranks)."""
    from pydoc_data.topics import topics

    out = tmp_path_factory.mktemp("stream")
    names = sorted(topics)
    for i in range(4):
        (out / f"part{i}.jsonl").write_text("".join(json.dumps({"text": topics[n]}) + "\n" for n in names[i::4]))
    return out


def stream_cfg(source: Path, tokenizer_path: str, **kw) -> DataConfig:
    return DataConfig(source=str(source / "*.jsonl"), streaming=True, tokenizer=tokenizer_path, seq_len=64,
                      cache_dir=str(source / "cache"), **kw)


def test_stream_resumes_to_the_same_next_windows(stream_source, tokenizer_path):
    cfg = stream_cfg(stream_source, tokenizer_path)
    first = StreamSampler(TokenStream(cfg, Path(tokenizer_path), rank=1, world_size=2, seed=0), 4, 2)
    for _ in range(7):
        first.next_step()
    state, rank_state = first.state_dict(), json.loads(json.dumps(first.rank_state()))  # as saved
    assert rank_state["buffer"]  # mid-document: the unused tokens travel with the state
    ahead = [first.stream.take(8) for _ in range(5)]
    again = StreamSampler(TokenStream(cfg, Path(tokenizer_path), rank=1, world_size=2, seed=0), 4, 2)
    again.load_state_dict(state, rank_state)
    assert all(np.array_equal(a, again.stream.take(8)) for a in ahead)
    with pytest.raises(DataError, match="same number of ranks"):
        StreamSampler(TokenStream(cfg, Path(tokenizer_path), 0, 1, 0), 4, 2).load_state_dict(state, rank_state)


def test_ranks_read_disjoint_parts_and_a_stream_runs_epochs(stream_source, tokenizer_path):
    cfg = stream_cfg(stream_source, tokenizer_path)
    a = TokenStream(cfg, Path(tokenizer_path), 0, 2, 0).take(50)
    b = TokenStream(cfg, Path(tokenizer_path), 1, 2, 0).take(50)
    assert not {tuple(r) for r in a} & {tuple(r) for r in b}
    small = stream_cfg(stream_source, tokenizer_path, val_fraction=0.5)
    stream = TokenStream(small, Path(tokenizer_path), 0, 4, 0)  # one file of ~20 topics: a few windows
    stream.take(2000)  # more than the file holds: it is read again
    assert stream.docs.epoch >= 1


def test_validation_windows_come_from_held_out_documents(stream_source, tokenizer_path, vocab):
    cfg = stream_cfg(stream_source, tokenizer_path, stream_val_windows=16)
    data = prepare_data(cfg, vocab)
    assert data.train is None and data.val.shape == (16, 65)
    assert np.array_equal(prepare_data(cfg, vocab).val, data.val)  # fixed: the same every evaluation
    train = {tuple(r) for r in TokenStream(cfg, Path(tokenizer_path), 0, 1, 0).take(500)}
    assert not train & {tuple(r) for r in data.val}


def test_streaming_needs_a_tokenizer(stream_source):
    with pytest.raises(DataError, match="data.streaming reads data.source with a given data.tokenizer"):
        DataConfig(source=str(stream_source / "*.jsonl"), streaming=True)


@pytest.mark.numerics
@pytest.mark.distributed
@pytest.mark.slow  # three launches; the stream's own resume is tested in-process above
def test_a_streamed_run_resumes_exactly_on_two_ranks(stream_source, tokenizer_path, runs_root):
    overrides = [f"data.source={stream_source / '*.jsonl'}", "data.streaming=true", f"data.tokenizer={tokenizer_path}",
                 "train.steps=4", "checkpoint.every=2", "eval.every=2", "monitors.jump.every=0"]
    run = runs_root / "streamed"
    launch(run, overrides)
    assert sorted(p.name for p in (run / "checkpoints" / "step_2" / "rank_state").iterdir()) == \
        ["rank_0.json", "rank_1.json"]
    resumed = runs_root / "streamed_resumed"  # as if it had died right after step 2's save
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_4")
    (resumed / "checkpoints" / "latest").write_text("step_2\n")
    kept = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 2]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    launch(resumed, overrides)
    assert losses(resumed) == losses(run) and len(losses(run)) == 4
