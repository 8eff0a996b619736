"""The training loop: data -> model -> loss (+ regularizers) -> DeepSpeed step -> metrics, checkpoints, hooks.

Read it top to bottom: `Trainer.__init__` builds everything (data, model, engine, resume), `fit` runs the
loop. Everything else (validation, monitors, jobs) is a Callback.
"""
from __future__ import annotations

import dataclasses
import datetime
import gc
import importlib
import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import regularizers as regs
from model import Llama, folders
from model.carry import load_carry
from model.llama import document_layout
from model.quant import quantize_model
from model.tokenizer_files import tokenizer_files
from model.weights import load_weights
from pretrain import checkpoint, compat, dist, hybrid, optimizer_state, precision, runlock
from pretrain.callbacks import Callback, Validation, due
from pretrain.config import Config, ConfigError, save_config
from pretrain.data import PackedData, StepSampler, get_batch, prepare_data
from pretrain.data.corpora import prepare_mixture
from pretrain.data.mixture import MixtureSampler
from pretrain.data.tokenizer import eos_id_of
from pretrain.engine import build_engine, build_model, load_weights_into
from pretrain.faults import NonFiniteError, Preemption, diagnose
from pretrain.hybrid import freeze_all_but
from model.io import atomic_write_bytes, atomic_write_json
from pretrain.metrics import MetricsLogger, detect_peak_tflops, memory_gb
from pretrain.plugins import JOBS, MONITORS

log = logging.getLogger("growlm")

FAULT_STATE = "faults.json"
MAX_ROLLBACKS = 3
"""Rollbacks to one checkpoint before `on_nonfinite: rollback` gives up (a diverging run would loop forever)."""


def init_distributed(timeout_s: float = 600.0, rendezvous_bind: str = "master_addr") -> None:
    """Join the launcher's process group (gloo on CPU, nccl on GPU); a bare `python -m pretrain` is rank 0 of 1.
    A collective that waits longer than `timeout_s` for a rank fails. The group is made here, on a store bound
    as `rendezvous_bind` says (dist.rendezvous_store), and DeepSpeed adopts it."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(dist.free_port()))
    if dist.on_gpu():  # before the process group: NCCL binds each rank's communicator to its current device
        torch.cuda.set_device(dist.device())
    if not torch.distributed.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        backend, world = "nccl" if dist.on_gpu() else "gloo", int(os.environ["WORLD_SIZE"])
        torch.distributed.init_process_group(  # a bound device makes new groups split NCCL comms (world > 1)
            backend, store=dist.rendezvous_store(timeout, rendezvous_bind), rank=int(os.environ["RANK"]),
            world_size=world, timeout=timeout, device_id=dist.device() if dist.on_gpu() and world > 1 else None)
        deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
        dist.barrier()  # every rank has mapped its peers' shared-memory buffers
        dist.release_shm_buffers()
        dist.start_heartbeat()


def load_data(cfg: Config) -> PackedData:
    """Rank 0 builds the tokenizer and caches first; the others then hit the cache. Pre-tokenized sources
    (data.sources) are only opened, on every rank at once."""
    if cfg.data.sources:
        return prepare_mixture(cfg.data, cfg.model.vocab_size)
    if dist.is_main():
        data = prepare_data(cfg.data, cfg.model.vocab_size)
    dist.barrier()
    if not dist.is_main():
        data = prepare_data(cfg.data, cfg.model.vocab_size)
    return data


class Trainer:
    def __init__(self, cfg: Config, callbacks: Sequence[Callback] = ()):
        self.device = dist.device()
        self.is_main = dist.is_main()
        self.world = dist.world_size()
        cfg, choice = precision.resolve(cfg, self.device)  # before config.yaml and the resume check see it
        if self.is_main:
            precision.report(choice, self.device)
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.ckpt_root = self.run_dir / "checkpoints"
        self._run_lock = self._lock_run_dir()
        self.callbacks: list[Callback] = []
        self._callback_states: dict[str, dict] = {}  # from the checkpoint resumed from

        self.data = load_data(cfg)
        self.eos_id = eos_id_of(self.data.tokenizer_path)

        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        model = build_model(cfg)
        self.carried: dict[str, Any] | None = None
        """What the grown folder train.init_from carries (model/carry.py), when train.carry takes any of it."""
        if cfg.train.init_from:
            self._init_weights(model, Path(cfg.train.init_from))
            if cfg.train.carry.optimizer or cfg.train.carry.schedule == "continue":
                self.carried = load_carry(Path(cfg.train.init_from))
        for module in cfg.imports:
            importlib.import_module(module)
        self.regularizers = regs.build_regularizers(cfg.regularizers)
        self.need_hidden = any(r.needs_hidden_states for r in self.regularizers)
        self.need_log_z_grad = any(r.needs_log_z_grad for r in self.regularizers)

        t = cfg.train
        if cfg.data.streaming:
            from pretrain.data.streaming import StagedWindows, StreamSampler, TokenStream

            stream = TokenStream(cfg.data, self.data.tokenizer_path, dist.rank(), self.world, cfg.run.seed)
            self.sampler = StreamSampler(stream, t.micro_batch_size, t.grad_accum)
            self.data.train = StagedWindows(self.sampler)
        elif self.data.mixture:
            self.sampler = MixtureSampler(self.data.mixture, t.micro_batch_size, t.grad_accum, self.world,
                                          dist.rank(), cfg.run.seed)
        else:
            self.sampler = StepSampler(len(self.data.train), t.micro_batch_size, t.grad_accum, self.world,
                                       dist.rank(), cfg.run.seed)
        self.global_batch = t.micro_batch_size * t.grad_accum * self.world
        self.tokens_per_step = self.global_batch * cfg.data.seq_len
        self.step = 0
        self.tokens = 0
        self.nonfinite_steps = 0
        self._rollbacks: dict[str, int] = {}
        self.skip_windows: set[tuple[int, int]] = set()
        """Sampler positions whose batches are skipped (windows that produced a non-finite step before a
        rollback). With the counts above it is kept in `<run>/faults.json`, so a requeued run skips them too."""
        self._load_fault_state()

        resume_from = self._resume_checkpoint()
        manifest = folders.verify(resume_from) if resume_from else None
        if manifest is not None:
            self._check_compatible(resume_from, manifest.get("meta", {}))
        if self.is_main:  # only once the run is known to go ahead: a refused resume leaves the run as it was
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            for name, file in tokenizer_files(self.data.tokenizer_path).items():  # checkpoints copy them from here
                atomic_write_bytes(self.run_dir / name, file.read_bytes())
        # Before the engine: its process group must get the collective timeout _build_engine sets on every group
        # (a group made later keeps torch's 30-minute default, and a rank stopped just before the preemption
        # check would leave its peers waiting there that long).
        self.preemption = Preemption()
        self.preempted = False
        self._build_engine(model, manifest["step"] if manifest else self.origin_step)
        if resume_from is not None:
            self._resume(resume_from, universal=manifest.get("meta", {}).get("world_size", self.world) != self.world)
        elif self.carried is not None:
            self._take_over(self.carried)

        if cfg.eval.every > 0:
            self.callbacks.append(Validation(cfg.eval.every, cfg.eval.batches))
        self.callbacks.extend(MONITORS.build(cfg.monitors))
        self.callbacks.extend(JOBS.build(cfg.jobs))
        self.callbacks.extend(callbacks)
        self._load_callback_states()
        self.flops_per_token = cfg.model.flops_per_token(cfg.data.seq_len)
        self.peak_tflops = cfg.log.peak_tflops or detect_peak_tflops()
        self.logger = MetricsLogger(self.run_dir, t.steps, self.step, self.is_main, cfg.log.tensorboard,
                                    cfg.log.progress, cfg.log.wandb, dataclasses.asdict(cfg))

    # ---- setup helpers -------------------------------------------------------------------------------
    def _init_weights(self, model: Llama, source: Path) -> None:
        src_cfg, state = load_weights(source, lazy=True)
        if src_cfg != self.cfg.model:
            raise ConfigError(
                f"train.init_from={source} holds a model of shape {src_cfg}, but model is {self.cfg.model}"
            )
        load_weights_into(model, state)
        log.info("initialized weights from %s", source)

    def _resume_checkpoint(self) -> Path | None:
        mode = self.cfg.train.resume
        if mode == "never":
            return None
        if mode == "auto":
            return checkpoint.resumable(self.ckpt_root, self.cfg.checkpoint.fallback)
        return Path(mode)

    def _lock_run_dir(self):
        """Rank 0 takes the run directory's lock before anything is written; every rank learns the outcome (a
        collective), so a refused run stops on all ranks instead of leaving the others at a barrier."""
        lock, refusal = None, None
        if self.is_main:
            try:
                lock = runlock.acquire(self.run_dir)
            except runlock.RunDirInUse as err:
                refusal = err
        if dist.all_reduce_sum(torch.tensor([0.0 if refusal is None else 1.0])).item() > 0:
            raise refusal or runlock.RunDirInUse(f"run directory {self.run_dir} is in use (see rank 0)")
        return lock

    def _check_compatible(self, ckpt: Path, saved: dict[str, Any]) -> None:
        found = compat.problems(saved, compat.run_meta(self.cfg, self.data.tokenizer_path, self.world))
        if found:
            raise ConfigError(f"cannot resume from {ckpt}: " + "; ".join(found))

    def _build_engine(self, model: Llama, start_step: int, subset: hybrid.Subset | None = None) -> None:
        """A DeepSpeed engine for the phase `start_step` is in (all parameters, or the trainable subset: the one
        given, which the caller drew already, or drawn here)."""
        self.subset_only = self._subset_phase(start_step)
        cfg = self.cfg
        if not self.subset_only:
            subset = None
        elif subset is None:
            subset = hybrid.subset_of(model, cfg.train.trainable, cfg.run.seed)
        if subset is not None:
            freeze_all_but(model, subset.names)
            if subset.masks:  # the unchosen elements of a trainable tensor must not decay either
                cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, weight_decay=0.0))
        lr_offset = cfg.train.trainable.after_step if self.subset_only else self.origin_step
        self.engine, self.optimizer, self.scheduler = build_engine(model, cfg, lr_offset)
        if subset is not None and subset.masks:
            hybrid.mask_gradients(self.engine.module, subset.masks)
        dist.set_collective_timeout(self.cfg.deepspeed.collective_timeout_s)  # the engine made new groups
        self._skipped_seen = 0

    @property
    def origin_step(self) -> int:
        """The step this run's own training starts at: the source's with train.carry.schedule=continue, else 0.
        Its scheduler counts from there, on a resume too."""
        if self.carried is not None and self.cfg.train.carry.schedule == "continue":
            return int(self.carried["step"])
        return 0

    def _take_over(self, carried: dict[str, Any]) -> None:
        """A fresh start from a grown folder: go on from the source's step and data position, and load the
        mapped Adam moments, as train.carry asks. Collective."""
        carry = self.cfg.train.carry
        if carry.schedule == "continue":
            if self.cfg.train.steps <= carried["step"]:
                raise ConfigError(f"train.steps={self.cfg.train.steps} but train.carry.schedule=continue starts at "
                                  f"the source's step {carried['step']}: train.steps counts from the source run's "
                                  "start, so raise it")
            self.step, self.tokens = int(carried["step"]), int(carried["tokens"])
            self.sampler.load_state_dict(carried["sampler"])
        if carry.optimizer:
            optimizer_state.restore_moments(self.engine, (carried["moments"], int(carried["optimizer_step"])))
        log.info("continuing %s: step %d, Adam moments %s", self.cfg.train.init_from, self.step,
                 f"carried (optimizer step {carried['optimizer_step']})" if carry.optimizer else "fresh")

    def _subset_phase(self, step: int) -> bool:
        """True once the norm-only hybrid mode's t0 is reached (the switch happens right after step t0)."""
        trainable = self.cfg.train.trainable
        return trainable.mode != "all" and step >= trainable.after_step

    def _resume(self, ckpt: Path, universal: bool = False) -> None:
        client = checkpoint.load(self.engine, ckpt, universal=universal)
        self.step, self.tokens = client["step"], client["tokens"]
        self._callback_states = client.get("callbacks", {})
        self._load_callback_states()  # on a rollback; at start-up the callbacks are built later
        if self.cfg.data.streaming:
            self.sampler.load_state_dict(client["sampler"], client.get(checkpoint.RANK_STATE))
        else:
            self.sampler.load_state_dict(client["sampler"])
        log.info("resumed from %s at step %d", ckpt, self.step)

    def _load_callback_states(self) -> None:
        """Hand each callback the state the checkpoint we resumed from saved for it (none on a fresh run)."""
        for cb in self.callbacks:
            if cb.state_key in self._callback_states:
                cb.load_state_dict(self._callback_states[cb.state_key])

    # ---- one batch -----------------------------------------------------------------------------------
    def batch(self, indices: np.ndarray, windows: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for these window indices, on this rank's device."""
        tokens = get_batch(self.data.train if windows is None else windows, indices)
        if self.device.type == "cuda":  # non_blocking only overlaps the copy from page-locked memory
            tokens = tokens.pin_memory()
        tokens = tokens.to(self.device, non_blocking=True)
        return tokens[:, :-1], tokens[:, 1:]

    def lm_forward(self, inputs: torch.Tensor, targets: torch.Tensor,
                hidden_states: bool = False) -> tuple[torch.Tensor, Any]:
        """(mean lm loss, the model's output): the plain head + cross-entropy, or with `train.loss_chunk` the
        fused chunked head (no full logits; the output carries per-token log Z instead). With
        data.document_masking, attention stays within documents and predictions from an EOS (of the next
        document's first token) are left out of the mean."""
        chunk, kwargs, keep = self.cfg.train.loss_chunk, {}, None
        if self.cfg.data.document_masking:
            documents, positions = document_layout(inputs, self.eos_id)
            kwargs = {"documents": documents}
            if self.cfg.data.document_positions == "document":
                kwargs["positions"] = positions
            keep = (inputs != self.eos_id).float()
        if chunk:
            out = self.engine(inputs, return_hidden_states=hidden_states, targets=targets, loss_chunk=chunk,
                              log_z_grad=self.need_log_z_grad, **kwargs)
            token_loss = out.token_loss
        else:
            out = self.engine(inputs, return_hidden_states=hidden_states, **kwargs)
            if keep is None:  # the fused mean: the numerics every unmasked run has always had
                return F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten()), out
            token_loss = F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        if keep is None:
            return token_loss.mean(), out
        keep = keep.view(-1)
        return (token_loss.view(-1) * keep).sum() / keep.sum().clamp(min=1.0), out

    def lm_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.lm_forward(*batch)[0]

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """lm_loss + sum of regularizers; hidden states are requested only when a regularizer needs them."""
        inputs, targets = batch
        lm_loss, out = self.lm_forward(inputs, targets, self.need_hidden)
        total = lm_loss
        metrics = {"lm_loss": lm_loss.detach()}
        if self.regularizers:
            inputs_ = regs.LossInputs(tokens=inputs, targets=targets, mask=None, logits=out.logits, log_z=out.log_z,
                                      hidden_states=out.hidden_states, final_normed=out.final_normed,
                                      step=self.step)
            for reg in self.regularizers:
                term, reg_metrics = reg(inputs_)
                total = total + term
                metrics[f"reg/{reg.name}"] = term.detach()
                metrics.update({f"reg/{reg.name}/{k}": torch.as_tensor(v) for k, v in reg_metrics.items()})
        metrics["loss"] = total.detach()
        return total, metrics

    # ---- the loop ------------------------------------------------------------------------------------
    def train_step(self) -> tuple[dict[str, torch.Tensor], int]:
        """One optimizer step over this rank's micro-batches: (summed per-micro-batch metrics, micro-batches)."""
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        while self._window() in self.skip_windows:
            log.warning("skipping the batch window at sampler position %s (it produced a non-finite step)",
                        self._window())
            self.sampler.next_step()
        self._current_window = self._window()
        micro_batches = self.sampler.next_step()
        for indices in micro_batches:
            total, metrics = self.loss(self.batch(indices))
            self.engine.backward(total)
            self.engine.step()
            for k, v in metrics.items():
                sums[k] += v.float()
        self.step += 1
        self.tokens += self.tokens_per_step
        return sums, len(micro_batches)

    def _window(self) -> tuple[int, int]:
        return self.sampler.window_key()

    def fit(self) -> None:
        try:
            self._fit()
        except BaseException as err:
            for cb in self.callbacks:
                try:
                    cb.on_train_abort(self, err)
                except Exception:  # the original error is the one to report
                    log.exception("callback %s failed while training was aborting", type(cb).__name__)
            raise

    def _fit(self) -> None:
        cfg = self.cfg
        for cb in self.callbacks:
            cb.on_train_start(self)
        window_time, window_tokens = 0.0, 0
        record: dict[str, Any] = {"step": self.step, "tokens": self.tokens}
        if self.step == self.origin_step:  # periodic monitors and validation also measure the model at the start
            self._run_step_end_hooks(record)
        while self.step < cfg.train.steps:
            dist.report_progress(self.step)
            t0 = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]  # the lr this step uses (the scheduler moves on inside step)
            sums, n_micro = self.train_step()
            if self.engine.skipped_steps > self._skipped_seen and self._on_nonfinite(sums):
                continue  # rolled back to the last checkpoint
            window_time += time.perf_counter() - t0
            window_tokens += self.tokens_per_step

            record = {"step": self.step, "tokens": self.tokens}
            if not self.subset_only and self._subset_phase(self.step):
                record.update(self.train_subset_only())
            if due(self.step, cfg.log.every, cfg.train.steps):
                record.update(self._train_metrics(sums, n_micro, window_time, window_tokens), lr=lr)
                window_time, window_tokens = 0.0, 0
            self._run_step_end_hooks(record)
            saved = due(self.step, cfg.checkpoint.every, cfg.train.steps) or self.step == cfg.train.steps
            if saved:
                self.save()
            if self.preemption.requested():
                if not saved:
                    self.save()
                log.warning("preempted: saved step %d, exiting so the job can be requeued", self.step)
                self.preempted = True
                break
        for cb in self.callbacks:
            cb.on_train_end(self, record)
        self.logger.close()

    def _on_nonfinite(self, metrics: dict[str, torch.Tensor]) -> bool:
        """Apply train.on_nonfinite to a step DeepSpeed skipped; True when the run was rolled back."""
        self._skipped_seen = self.engine.skipped_steps
        self.nonfinite_steps += 1
        message = diagnose(self.step, metrics, self.engine.module)
        policy = self.cfg.train.on_nonfinite
        if policy == "stop":
            raise NonFiniteError(message + "; stopping (train.on_nonfinite=stop)")
        if policy == "skip":
            log.warning("%s; continuing (%d skipped so far)", message, self.nonfinite_steps)
            self._save_fault_state()
            return False
        ckpt = folders.latest(self.ckpt_root)
        if ckpt is None:
            raise NonFiniteError(message + "; no checkpoint to roll back to")
        self._rollbacks[ckpt.name] = self._rollbacks.get(ckpt.name, 0) + 1
        if self._rollbacks[ckpt.name] > MAX_ROLLBACKS:
            raise NonFiniteError(f"{message}; already rolled back to {ckpt} {MAX_ROLLBACKS} times, the run "
                                 "diverges from there whatever data it skips: stopping")
        log.warning("%s; rolling back to %s and skipping this batch window", message, ckpt)
        self.skip_windows.add(self._current_window)
        self._save_fault_state()
        del self.engine, self.optimizer, self.scheduler
        gc.collect()
        self._build_engine(build_model(self.cfg), folders.verify(ckpt)["step"])
        self._resume(ckpt)
        self.logger.rewind(self.step)
        return True

    def _save_fault_state(self) -> None:
        """Persist what the non-finite policy learned, at once: a run killed before its next checkpoint must
        not meet the same bad window again, nor reset its rollback count and loop."""
        if self.is_main:
            atomic_write_json(self.run_dir / FAULT_STATE, {
                "nonfinite_steps": self.nonfinite_steps, "rollbacks": self._rollbacks,
                "skip_windows": sorted(self.skip_windows)})

    def _load_fault_state(self) -> None:
        """Merge `<run>/faults.json` into this run's state (the larger count, the union of windows)."""
        path = self.run_dir / FAULT_STATE
        if self.cfg.train.resume == "never" or not path.is_file():
            return
        try:
            saved = json.loads(path.read_text())
            windows = {(int(e), int(p)) for e, p in saved["skip_windows"]}
            rollbacks = {str(k): int(v) for k, v in saved["rollbacks"].items()}
            nonfinite = int(saved["nonfinite_steps"])
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} is damaged ({err}); delete it to resume without the skipped batch windows "
                              "it recorded") from None
        self.skip_windows |= windows
        for name, count in rollbacks.items():
            self._rollbacks[name] = max(count, self._rollbacks.get(name, 0))
        self.nonfinite_steps = max(self.nonfinite_steps, nonfinite)
        if windows:
            log.warning("%s: skipping %d batch window(s) that produced non-finite steps before", path, len(windows))

    def train_subset_only(self) -> dict[str, int]:
        """Rebuild the engine over the trainable subset, carrying the fp32 weights, the lr schedule and (ZeRO-1/2)
        the subset's Adam moments."""
        trainable = self.cfg.train.trainable
        subset = hybrid.subset_of(self.engine.module, trainable, self.cfg.run.seed)
        weights = hybrid.full_weights(self.engine)
        moments = optimizer_state.carry_moments(self.engine, subset.names)
        if moments is not None and subset.masks:
            moments = hybrid.mask_moments(moments, subset.masks)
        del self.engine, self.optimizer, self.scheduler
        gc.collect()
        model = Llama(self.cfg.model)
        quantize_model(model, self.cfg.train.quantization)
        model.load_state_dict(weights, strict=False)  # named_parameters() lists a tied head only once
        self._build_engine(model, self.step, subset)
        hybrid.restore_masters(self.engine, weights)
        if moments is not None:
            optimizer_state.restore_moments(self.engine, moments)
        n_train = subset.size(weights)
        log.info("step %d: training only %d parameters (%s) from now on, Adam moments %s", self.step, n_train,
                 trainable.mode, "carried" if moments is not None else "restarted")
        return {"hybrid/trainable_params": n_train, "hybrid/frozen_params": sum(w.numel() for w in weights.values()) - n_train}

    def _run_step_end_hooks(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_step_end(self, record)
        if len(record) > 2:
            self.logger.log(record)

    def _train_metrics(self, sums: dict[str, torch.Tensor], n_micro: int, seconds: float, tokens: int) -> dict:
        keys = sorted(sums)
        means = dist.all_reduce_mean(torch.stack([sums[k] for k in keys]) / n_micro)
        out: dict[str, Any] = dict(zip(keys, means.tolist()))
        grad_norm = self.engine.get_global_grad_norm()
        out["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        out["tokens_per_s"] = tokens / seconds
        out["step_time"] = seconds * self.tokens_per_step / tokens
        out["tflops"] = out["tokens_per_s"] * self.flops_per_token / self.world / 1e12
        if self.peak_tflops:
            out["mfu"] = out["tflops"] / self.peak_tflops
        out["mem_gb"] = memory_gb()
        out["nonfinite_steps"] = self.nonfinite_steps
        if self.data.mixture:
            out.update(self.sampler.realized(self.cfg.data.seq_len))
        return out

    def save(self) -> Path:
        client = {
            "step": self.step,
            "tokens": self.tokens,
            "sampler": self.sampler.state_dict(),
            "world_size": self.world,
            "zero_stage": self.cfg.deepspeed.zero_stage,
            "callbacks": {cb.state_key: state for cb in self.callbacks if (state := cb.state_dict())},
        }
        extra = {"config.yaml": self.run_dir / "config.yaml"}
        extra |= {name: self.run_dir / name for name in tokenizer_files(self.data.tokenizer_path)}
        path = checkpoint.save(self.engine, self.ckpt_root, self.step, client, extra, self.cfg.checkpoint.keep,
                               meta=compat.run_meta(self.cfg, self.data.tokenizer_path, self.world),
                               rank_state=self.sampler.rank_state() if self.cfg.data.streaming else None)
        for cb in self.callbacks:
            cb.on_checkpoint_saved(self, path)
        return path
