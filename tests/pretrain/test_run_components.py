"""The trainer's smaller components alone: where a carried run starts (carry.py), which trainable phase a
step is in (phases.py), what a run directory holds before training (rundir.py) and the data pipeline's
sampler choice and device batches (data/pipeline.py)."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain import carry
from pretrain.config import ConfigError, load_config
from pretrain.data.pipeline import build_sampler, device_batch
from pretrain.data.sampler import StepSampler
from pretrain.phases import TrainablePhases
from pretrain import compat
from pretrain.__main__ import main as pretrain_main
from pretrain.rundir import RunDir
from pretrain.startup import ResumePoint, keep_global_batch, resume_candidate
from storage import folders

TINY = "configs/tiny.yaml"
CARRIED = {"step": 40, "tokens": 4_000, "sampler": {"epoch": 0, "position": 40}, "moments": {}, "optimizer_step": 40}


def carry_config(schedule: str, steps: int = 100):
    """A run from a grown folder (no folder needed: these functions read only the config)."""
    cfg = load_config(TINY, [f"train.steps={steps}"])
    train = dataclasses.replace(cfg.train, init_from="grown", carry=dataclasses.replace(cfg.train.carry,
                                                                                          schedule=schedule))
    return dataclasses.replace(cfg, train=train)


class RecordingSampler:
    def load_state_dict(self, state: dict) -> None:
        self.state = state


@pytest.mark.parametrize("schedule, carried, expected", [("continue", CARRIED, 40), ("rewarm", CARRIED, 0),
                                                         ("continue", None, 0)])
def test_origin_step_is_the_source_step_only_when_the_schedule_continues(schedule, carried, expected):
    assert carry.origin_step(carry_config(schedule), carried) == expected


def test_take_over_goes_on_from_the_source_position():
    sampler = RecordingSampler()
    assert carry.take_over(carry_config("continue"), CARRIED, engine=None, sampler=sampler) == (40, 4_000)
    assert sampler.state == CARRIED["sampler"]
    assert carry.take_over(carry_config("rewarm"), CARRIED, None, RecordingSampler()) == (0, 0)


def test_take_over_refuses_a_run_that_would_end_before_the_source_step():
    with pytest.raises(ConfigError, match=r"train.steps=40 .* source's step 40"):
        carry.take_over(carry_config("continue", steps=40), CARRIED, None, RecordingSampler())


@pytest.mark.parametrize("mode, after, phases", [("all", 0, [False, False, False]),
                                                 ("norms_only", 5, [False, True, True]),
                                                 ("norms_only", 0, [True, True, True])])
def test_subset_phase_starts_at_after_step(mode, after, phases):
    cfg = load_config(TINY, [f"train.trainable.mode={mode}", f"train.trainable.after_step={after}"])
    assert [TrainablePhases(cfg).subset_phase(step) for step in (0, 5, 9)] == phases


def test_run_files_are_written_by_rank_zero_only_and_reload_as_the_config(tmp_path):
    tokenizer = tmp_path / "src" / "tok.model"
    tokenizer.parent.mkdir()
    tokenizer.write_bytes(b"sentencepiece bytes")
    cfg = load_config(TINY, [f"run.out_dir={tmp_path}", "run.name=r", "train.steps=9"])
    RunDir(cfg, tokenizer, world=1, is_main=False).write_run_files()
    assert not cfg.run_dir.exists()
    files = RunDir(cfg, tokenizer, world=1, is_main=True)
    files.write_run_files()
    assert (cfg.run_dir / "tokenizer.model").read_bytes() == b"sentencepiece bytes"
    assert dataclasses.asdict(load_config(str(cfg.run_dir / "config.yaml"))) == dataclasses.asdict(cfg)
    assert resume_candidate(cfg) is None  # auto, and no checkpoint yet


def test_a_named_checkpoint_that_is_not_one_is_refused(tmp_path):
    cfg = load_config(TINY, [f"run.out_dir={tmp_path}", f"train.resume={tmp_path / 'nowhere'}"])
    with pytest.raises(Exception, match="nowhere"):
        resume_candidate(cfg)


def saved_on(tmp_path, world: int, global_batch: int):
    """A run directory whose latest checkpoint was saved by `world` ranks at `global_batch` (manifest only)."""
    ckpt = tmp_path / "r" / "checkpoints" / "step_5"
    ckpt.mkdir(parents=True)
    folders.write_manifest(ckpt, 5, {"world_size": world, "sample_sequence": {compat.GLOBAL_BATCH: global_batch}})
    (ckpt.parent / "latest").write_text("step_5\n")
    return lambda *overrides: load_config(TINY, [f"run.out_dir={tmp_path}", "run.name=r", *overrides])


def test_a_resume_on_another_number_of_ranks_keeps_the_global_batch_by_deriving_grad_accum(tmp_path, caplog):
    config = saved_on(tmp_path, world=2, global_batch=16)

    def kept(cfg, world):
        return keep_global_batch(cfg, world, resume_candidate(cfg))

    with caplog.at_level("WARNING", logger="growlm"):
        one_rank = kept(config("train.micro_batch_size=4", "train.grad_accum=1"), world=1)
    assert one_rank.train.grad_accum == 4 and "train.grad_accum 1 -> 4 keeps its global batch of 16" in caplog.text
    assert kept(config("train.micro_batch_size=2"), world=4).train.grad_accum == 2
    same = config("train.micro_batch_size=4", "train.grad_accum=3")
    assert kept(same, world=2) is same  # same ranks: a changed batch is compat's to refuse
    with pytest.raises(ConfigError, match=r"global batch of 16 .* use train.micro_batch_size in \[1, 2, 4, 8, 16\]"):
        kept(config("train.micro_batch_size=3"), world=1)
    with pytest.raises(ConfigError, match=r"train.micro_batch_size in \[1, 2, 4\]"):
        kept(config("train.micro_batch_size=3"), world=4)
    fresh = config("run.name=fresh", "train.resume=never", "train.micro_batch_size=3")
    assert kept(fresh, world=1) is fresh


def listing(root: Path) -> dict[str, str]:
    """Every file under `root` with its content hash: what a refused start must leave as it was."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_starting_over_in_a_folder_that_holds_a_run_is_refused_and_touches_nothing(tmp_path, capsys):
    """Issue 51: `train.resume=never` in a used run folder deleted the old run's later metrics and checkpoints."""
    config = saved_on(tmp_path, world=1, global_batch=8)
    (tmp_path / "r" / "metrics.jsonl").write_text('{"step": 5, "loss": 4.0}\n')
    before = listing(tmp_path)
    with pytest.raises(ConfigError, match=r"train.resume=never: .*r holds a run \(checkpoints step_5\).*another run.name"):
        resume_candidate(config("train.resume=never"))
    assert pretrain_main(["configs/tiny.yaml", f"run.out_dir={tmp_path}", "run.name=r", "train.resume=never",
                          "--check"]) == 2
    assert "holds a run" in capsys.readouterr().err
    assert listing(tmp_path) == before
    assert resume_candidate(config("run.name=elsewhere", "train.resume=never")) is None  # a folder of its own


def test_a_branch_inside_the_run_folder_is_refused_and_every_form_of_its_latest_resumes(tmp_path):
    """Issue 51: a WSD branch that kept the stable run's run.name trained inside it from an earlier checkpoint."""
    config = saved_on(tmp_path, world=1, global_batch=8)
    root = tmp_path / "r" / "checkpoints"
    (root / "step_3").mkdir()
    folders.write_manifest(root / "step_3", 3, {"world_size": 1})
    with pytest.raises(ConfigError, match=r"latest step_5\).*rewrite its history.*run directory of its own"):
        resume_candidate(config(f"train.resume={root / 'step_3'}"))
    for form in (root, root / "latest", root / "step_5"):  # the three forms every tool takes
        assert resume_candidate(config(f"train.resume={form}")).checkpoint == root / "step_5"
    assert resume_candidate(config("run.name=branch", f"train.resume={root / 'step_3'}")).checkpoint == root / "step_3"


def test_plain_data_gets_the_shuffled_step_sampler_and_batches_shift_by_one():
    class Data:
        train = np.arange(40 * 9, dtype=np.int32).reshape(40, 9)
        mixture = None

    cfg = load_config(TINY, ["train.micro_batch_size=2", "train.grad_accum=3"])
    sampler = build_sampler(cfg, Data())
    assert isinstance(sampler, StepSampler)
    micro_batches = sampler.next_step()
    assert len(micro_batches) == 3 and all(len(mb) == 2 for mb in micro_batches)
    inputs, targets = device_batch(Data.train, micro_batches[0], torch.device("cpu"))
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(inputs[0], torch.as_tensor(Data.train[micro_batches[0][0], :-1], dtype=inputs.dtype))


class Part:
    """A stateful part that records what it was handed."""

    def __init__(self, state):
        self.state, self.loaded = state, None

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.loaded = state


class RankPart(Part):
    def rank_state(self):
        return {"offset": 7}

    def load_state_dict(self, state, rank_state=None):
        self.loaded = (state, rank_state)


def test_a_checkpoint_gathers_its_client_state_from_the_tracked_parts(tmp_path, monkeypatch):
    """The layout readers of a checkpoint rely on (storage/carry.py's source_progress, the lm-eval job): the
    progress at the top, each other part under its key, a token stream's position per rank."""
    cfg = load_config(TINY, [f"run.out_dir={tmp_path}", "run.name=r"])
    (tmp_path / "tok.model").write_bytes(b"sentencepiece bytes")  # the manifest records its hash
    files = RunDir(cfg, tmp_path / "tok.model", world=1, is_main=True)
    progress, sampler, callbacks = Part({"step": 3, "tokens": 96}), RankPart({"step": 3}), Part({"cb": {"n": 1}})
    for key, part in (("", progress), ("sampler", sampler), ("callbacks", callbacks)):
        files.track(key, part)
    with pytest.raises(ValueError, match="'sampler' is already tracked"):
        files.track("sampler", Part({}))
    saved = {}
    monkeypatch.setattr(files.saves, "save", lambda engine, step, client, extra, meta, rank: saved.update(
        client=client, rank=rank, step=step))
    monkeypatch.setattr("pretrain.rundir.tokenizer_files", lambda path: {})
    files.save(engine=None, step=3)
    assert saved == {"client": {"step": 3, "tokens": 96, "sampler": {"step": 3}, "callbacks": {"cb": {"n": 1}}},
                     "rank": {"offset": 7}, "step": 3}
    client = {**saved["client"], "rank_state": {"offset": 7}}
    monkeypatch.setattr("pretrain.checkpoint.load", lambda engine, path, universal: client)
    files.load(None, ResumePoint(tmp_path, {"step": 3, "meta": {"world_size": 1}}))
    assert progress.loaded is client and callbacks.loaded == {"cb": {"n": 1}}
    assert sampler.loaded == ({"step": 3}, {"offset": 7})
