"""Faults injected into real training processes for tests, selected by the GROWLM_FAULT environment variable.

Listed under `imports:` in a run's config, this module is imported on every rank before training starts and
patches the trainer from outside, so the framework carries no test hooks. GROWLM_FAULT is a comma-separated
list of:
  kill_rank:R:S      rank R SIGKILLs itself right after completing step S
  kill_in_save:S     the process dies while writing checkpoint S (DeepSpeed files written, no manifest yet)
  kill_in_async_save:S  with checkpoint.async_save, every rank SIGKILLs itself in the background write of
                     checkpoint S, after its first file and once training has completed step S+1
  nan_at:S[:FILE]    the batch window of step S gives a NaN loss on every rank (wherever it is met again; with
                     FILE, also in a later process: the window is kept there, as a bad record in the data is)
  enospc_in_save:S    writing checkpoint S fails with "No space left on device" (ENOSPC)
  record_samples:DIR each rank appends the window indices of every step to DIR/rank_<r>.jsonl
  cpu_bf16:yes|no    torch reports this CPU with (AMX) or without native bf16 units
  slow_save:SECONDS  every checkpoint save takes SECONDS longer (before its manifest is written)
  optimizer_groups:DIR  after step 1, each rank writes DIR/rank_<r>.json: per ZeRO-1/2 optimizer group, its
                     parameter names, use_muon, lr and the optimizer-state keys of this rank's flat partition
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch

from pretrain import async_save, checkpoint, dist
from pretrain.data import StepSampler
from pretrain.trainer import Trainer
from storage import folders


def _faults() -> list[list[str]]:
    return [f.split(":") for f in os.environ.get("GROWLM_FAULT", "").split(",") if f]


for name, *args in _faults():
    if name == "cpu_bf16":  # AMX or no bf16 units, the kernels uncapped (whatever cap the test matrix set)
        torch.cpu._is_amx_tile_supported = lambda _v=args[0] == "yes": _v
        torch.cpu._is_avx512_bf16_supported = lambda: False
        torch.backends.cpu.get_cpu_capability = lambda: "AVX512"
        os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
    elif name == "slow_save":
        import time

        seconds = float(args[0])
        write_manifest = folders.write_manifest

        def slow_write_manifest(ckpt, step, meta, _orig=write_manifest, _s=seconds):
            time.sleep(_s)
            _orig(ckpt, step, meta)

        folders.write_manifest = slow_write_manifest
    elif name == "kill_rank":
        rank, at_step = int(args[0]), int(args[1])
        train_step = Trainer.train_step

        def killing_train_step(self, _orig=train_step, _rank=rank, _at=at_step):
            out = _orig(self)
            if self.step == _at and dist.rank() == _rank:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        Trainer.train_step = killing_train_step
    elif name == "kill_in_save":
        at_step = int(args[0])
        write_manifest = folders.write_manifest

        def dying_write_manifest(ckpt, step, meta, _orig=write_manifest, _at=at_step):
            if step == _at:
                os._exit(9)
            _orig(ckpt, step, meta)

        folders.write_manifest = dying_write_manifest
    elif name == "kill_in_async_save":
        import sys
        import threading

        at_step = int(args[0])
        went_on = threading.Event()  # training completed step S+1: it did not wait for the write
        train_step, snapshot_save = Trainer.train_step, async_save.SnapshotEngine.save

        def noting_train_step(self, _orig=train_step, _at=at_step, _went_on=went_on):
            out = _orig(self)
            if self.step > _at:
                _went_on.set()
            return out

        def dying_save(self, state_dict, path, _orig=snapshot_save, _at=at_step, _went_on=went_on):
            _orig(self, state_dict, path)
            if folders.step_of(Path(path).parent) == _at and len(self.writes) == 1:
                def write_then_die(_write=self.writes[0]):
                    _write()
                    went = _went_on.wait(120)
                    print(f"killed while writing step_{_at}, training {'at step %d' % (_at + 1) if went else 'stuck'}",
                          file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)

                self.writes[0] = write_then_die

        Trainer.train_step = noting_train_step
        async_save.SnapshotEngine.save = dying_save
    elif name == "nan_at":
        at_step = int(args[0])
        loss = Trainer.loss
        memo = Path(args[1]) if len(args) > 1 else None  # the bad window, shared with a requeued process
        bad_windows: set = {tuple(json.loads(memo.read_text()))} if memo and memo.is_file() else set()

        def nan_loss(self, batch, normalizer=None, _orig=loss, _at=at_step, _bad=bad_windows, _memo=memo):
            total, metrics = _orig(self, batch, normalizer)
            if self.step + 1 == _at and not _bad:  # self.step counts completed steps; first pass only
                _bad.add(self._current_window)
                if _memo:
                    _memo.write_text(json.dumps(list(self._current_window)))
            if self._current_window in _bad:  # a data fault: it follows the batch, not the step number
                total = total * float("nan")
            return total, metrics

        Trainer.loss = nan_loss
    elif name == "enospc_in_save":
        import errno

        import torch

        at_step = int(args[0])
        save, torch_save = checkpoint.save, torch.save
        saving = {"step": None}

        def full_disk_save(*a, _orig=torch_save, **kw):
            if saving["step"] == at_step:
                raise OSError(errno.ENOSPC, "No space left on device")
            return _orig(*a, **kw)

        def tracking_save(engine, root, step, *a, _orig=save, **kw):
            saving["step"] = step
            try:
                return _orig(engine, root, step, *a, **kw)
            finally:
                saving["step"] = None

        torch.save = full_disk_save
        checkpoint.save = tracking_save
    elif name == "record_samples":
        out_dir = Path(args[0])
        next_step = StepSampler.next_step

        def recording_next_step(self, _orig=next_step, _dir=out_dir):
            micro_batches = _orig(self)
            _dir.mkdir(parents=True, exist_ok=True)
            with open(_dir / f"rank_{dist.rank()}.jsonl", "a") as f:
                f.write(json.dumps([mb.tolist() for mb in micro_batches]) + "\n")
            return micro_batches

        StepSampler.next_step = recording_next_step
    elif name == "optimizer_groups":
        out_dir = Path(args[0])
        train_step = Trainer.train_step

        def inspecting_train_step(self, _orig=train_step, _dir=out_dir):
            out = _orig(self)
            if self.step == 1:
                zero = self.engine.optimizer  # DeepSpeedZeroOptimizer: groups of module parameters, flat partitions
                names = {id(p): n for n, p in self.engine.module.named_parameters()}
                groups = [{"names": [names[id(p)] for p in zero.bit16_groups[i]], "use_muon": group["use_muon"],
                           "lr": group["lr"], "state": sorted(zero.optimizer.state[group["params"][0]])}
                          for i, group in enumerate(zero.optimizer.param_groups)]
                _dir.mkdir(parents=True, exist_ok=True)
                (_dir / f"rank_{dist.rank()}.json").write_text(json.dumps(groups))
            return out

        Trainer.train_step = inspecting_train_step
