"""The training loop: data -> model -> objective -> DeepSpeed step -> metrics, checkpoints, hooks.

Read it top to bottom: `Trainer.__init__` wires the components (docs/design.md, "The trainer"), `fit` runs the
loop. Each concern lives in a component it only calls: the data pipeline (pretrain/data/pipeline.py), the
objective (objective.py), the trainable phases and their engines (phases.py), a start from another model
(carry.py), the run directory and its checkpoints (rundir.py), the non-finite policy and preemption
(faults.py), and everything periodic, which is a Callback (callbacks.py).
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from pretrain import carry, dist, rundir, startup
from pretrain.callbacks import Callback, CallbackStates, abort, build_callbacks, due
from pretrain.data.pipeline import build_sampler, device_batch
from pretrain.engine import build_model
from pretrain.faults import NonFinitePolicy, Preemption
from pretrain.metrics import MetricsLogger, PhaseTimes, detect_peak_tflops, memory_gb, report_times, throughput
from pretrain.objective import Batch, Objective
from pretrain.phases import TrainablePhases
from pretrain.rundir import TOP_LEVEL, RunDir
from pretrain.startup import ResumePoint

if TYPE_CHECKING:
    from pretrain.config import Config

log = logging.getLogger("growlm")


class Trainer:
    def __init__(self, cfg: "Config", callbacks: Sequence[Callback] = ()):
        self.device, self.is_main, self.world = dist.device(), dist.is_main(), dist.world_size()
        self._run_lock = rundir.lock(cfg.run_dir, self.is_main)
        start = startup.decide(cfg, self.device, self.world)  # --check ran the same decisions
        self.cfg = cfg = start.cfg
        self.run_dir, self.data = cfg.run_dir, start.data

        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        model = build_model(cfg)
        carry.init_from(model, cfg)
        self.objective = Objective(cfg, self.data.tokenizer_path)
        self.sampler = build_sampler(cfg, self.data)
        self.tokens_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum * self.world * cfg.data.seq_len
        self.step, self.tokens = 0, 0
        self.faults = NonFinitePolicy(cfg.train.on_nonfinite, self.run_dir, self.is_main, cfg.train.resume)
        self.times = PhaseTimes()

        self.files = RunDir(cfg, self.data.tokenizer_path, self.world, self.is_main)
        self.files.write_run_files()
        # Before the engine: its process group must get the phases' collective timeout (a later group keeps torch's
        # 30-minute default, and a rank stopped before the preemption check would leave its peers waiting that long).
        self.preemption, self.preempted = Preemption(), False
        self.phases = TrainablePhases(cfg, start.origin_step)
        first = start.resume.step if start.resume else self.phases.origin_step
        self._use_engine(self.phases.build(model, first), first)
        self.callbacks = build_callbacks(cfg, callbacks)
        for key, part in ((TOP_LEVEL, self), ("sampler", self.sampler), ("callbacks", CallbackStates(self.callbacks))):
            self.files.track(key, part)  # what a checkpoint holds beside DeepSpeed's state
        if start.resume is not None:
            self._resume(start.resume)
        elif start.carried is not None:
            self.step, self.tokens = carry.take_over(cfg, start.carried, self.engine, self.sampler)
        self.flops_per_token = cfg.model.flops_per_token(cfg.data.seq_len)
        self.peak_tflops = cfg.log.peak_tflops or detect_peak_tflops()
        self.logger = MetricsLogger(self.run_dir, cfg.train.steps, self.step, self.is_main, cfg.log.tensorboard,
                                    cfg.log.progress, cfg.log.wandb, dataclasses.asdict(cfg))

    # ---- engine and resume ---------------------------------------------------------------------------
    def _use_engine(self, parts: tuple, start_step: int) -> None:
        """Train from now on with (engine, optimizer, scheduler), built for the phase `start_step` is in."""
        self.engine, self.optimizer, self.scheduler = parts
        self.subset_only = self.phases.subset_phase(start_step)
        self._skipped_seen = 0

    def _drop_engine(self) -> None:
        self.files.saves.before_update()  # the engine built next may move state a save is still copying
        del self.engine, self.optimizer, self.scheduler
        gc.collect()

    def _resume(self, point: ResumePoint) -> None:
        self.files.load(self.engine, point)
        log.info("resumed from %s at step %d", point.checkpoint, self.step)

    def state_dict(self) -> dict[str, Any]:
        """The run's progress, at the top of a checkpoint's client state (with the ranks and stage it ran on)."""
        return {"step": self.step, "tokens": self.tokens, "world_size": self.world,
                "zero_stage": self.cfg.deepspeed.zero_stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens = state["step"], state["tokens"]

    # ---- one batch -----------------------------------------------------------------------------------
    def batch(self, indices: np.ndarray, windows: Any = None) -> Batch:
        """(inputs, targets) for these window indices (of the training windows by default), on this device."""
        return device_batch(self.data.train if windows is None else windows, indices, self.device)

    def lm_loss(self, batch: Batch) -> torch.Tensor:
        return self.objective.lm_forward(self.engine, *batch)[0]

    def loss(self, batch: Batch, normalizer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        return self.objective(self.engine, batch, self.step, normalizer)

    # ---- the loop ------------------------------------------------------------------------------------
    def train_step(self) -> tuple[dict[str, torch.Tensor], int]:
        """One optimizer step over this rank's micro-batches: (summed per-micro-batch metrics, micro-batches)."""
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        with self.times("data"):
            self._current_window = self.faults.next_window(self.sampler)
            micro_batches = [self.batch(indices) for indices in self.sampler.next_step()]
        with self.times("step"):
            normalizer = self.objective.step_normalizer(micro_batches, self.world)
            for batch in micro_batches:
                total, metrics = self.loss(batch, normalizer)
                self.engine.backward(total)
                self.files.saves.before_update()  # an asynchronous save may still be copying the state
                self.engine.step()
                for k, v in metrics.items():
                    sums[k] += v.float()
        self.step += 1
        self.tokens += self.tokens_per_step
        return sums, len(micro_batches)

    def fit(self) -> None:
        try:
            self._fit()
        except BaseException as err:
            self.files.saves.settle()  # a complete checkpoint in flight is published, not lost
            abort(self.callbacks, self, err)
            raise

    def _fit(self) -> None:
        cfg = self.cfg
        for cb in self.callbacks:
            cb.on_train_start(self)
        window_time, window_tokens = 0.0, 0
        record: dict[str, Any] = {"step": self.step, "tokens": self.tokens}
        if self.step == self.phases.origin_step:  # periodic monitors and validation also measure the start
            self._run_step_end_hooks(record)
        self.times, first_step, first_tokens = PhaseTimes(), self.step, self.tokens
        while self.step < cfg.train.steps:
            self.times.run("progress", dist.report_progress, self.step)
            t0 = time.perf_counter()
            lr = self.scheduler.base_lr()  # the lr this step uses (the scheduler moves on inside step)
            sums, n_micro = self.train_step()
            if self.engine.skipped_steps > self._skipped_seen and self._on_nonfinite(sums):
                continue  # rolled back to the last checkpoint
            window_time += time.perf_counter() - t0
            window_tokens += self.tokens_per_step
            record = {"step": self.step, "tokens": self.tokens}
            if not self.subset_only and self.phases.subset_phase(self.step):
                record.update(self.train_subset_only())
            if due(self.step, cfg.log.every, cfg.train.steps):
                record.update(self.times.run("metrics", self._train_metrics, sums, n_micro, window_time, window_tokens),
                              lr=lr)
                window_time, window_tokens = 0.0, 0
            self._run_step_end_hooks(record)
            saved = due(self.step, cfg.checkpoint.every, cfg.train.steps) or self.step == cfg.train.steps
            if saved:
                self.times.run("checkpoint", self.save)
            if self.times.run("preemption", self.preemption.requested):
                if not saved:
                    self.save()
                log.warning("preempted: saved step %d, exiting so the job can be requeued", self.step)
                self.preempted = True
                break
        self._checkpoints_saved(wait=True)
        if self.is_main:
            report_times(self.times, self.run_dir, self.step - first_step, self.tokens - first_tokens, self.world)
        for cb in self.callbacks:
            cb.on_train_end(self, record)
        self.logger.close()

    def _on_nonfinite(self, metrics: dict[str, torch.Tensor]) -> bool:
        """Apply train.on_nonfinite to a step DeepSpeed skipped; True when the run was rolled back."""
        self._checkpoints_saved(wait=True)  # every rank then reads the same `latest`
        self._skipped_seen = self.engine.skipped_steps
        ckpt = self.faults.handle(self.step, metrics, self.engine.module, self._current_window,
                                  self.files.checkpoints)
        if ckpt is None:
            return False
        self._drop_engine()
        point = ResumePoint.verified(ckpt)
        self._use_engine(self.phases.build(build_model(self.cfg), point.step), point.step)
        self._resume(point)
        self.logger.rewind(self.step)
        return True

    def train_subset_only(self) -> dict[str, int]:
        """Switch to the hybrid mode's subset engine (pretrain/phases.py); the record's hybrid/* counts."""
        handover = self.phases.hand_over(self.engine)
        self._drop_engine()
        parts, counts = self.phases.take_over(handover, self.step)
        self._use_engine(parts, self.step)
        return counts

    def _run_step_end_hooks(self, record: dict[str, Any]) -> None:
        self._checkpoints_saved()
        for cb in self.callbacks:
            self.times.run(f"hook/{type(cb).__name__}", cb.on_step_end, self, record)
        if len(record) > 2:
            self.times.run("log", self.logger.log, record)

    def _train_metrics(self, sums: dict[str, torch.Tensor], n_micro: int, seconds: float, tokens: int) -> dict:
        keys = sorted(sums)
        means = dist.all_reduce_mean(torch.stack([sums[k] for k in keys]) / n_micro)
        out: dict[str, Any] = dict(zip(keys, means.tolist()))
        grad_norm = self.engine.get_global_grad_norm()
        out["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        out.update(throughput(tokens, seconds, self.tokens_per_step, self.flops_per_token, self.world,
                              self.peak_tflops), mem_gb=memory_gb())
        out["nonfinite_steps"] = self.faults.nonfinite_steps
        if self.data.mixture:
            out.update(self.sampler.realized(self.cfg.data.seq_len))
        return out

    def save(self) -> None:
        self.files.save(self.engine, self.step)
        self._checkpoints_saved()

    def _checkpoints_saved(self, wait: bool = False) -> None:
        """on_checkpoint_saved for each checkpoint complete since the last call (async: once published)."""
        for path in self.files.saves.completed(wait):
            for cb in self.callbacks:
                cb.on_checkpoint_saved(self, path)
