"""Where metrics go on rank 0: metrics.jsonl (the contract), TensorBoard, and a progress bar or plain lines; and
where the loop's wall time goes, by phase (timing.json)."""
from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from pretrain.config import WandbConfig
from storage import run_files
from storage.io import atomic_write_json

log = logging.getLogger("growlm")

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (SXM parts).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def detect_peak_tflops() -> float | None:
    """Per-device bf16 peak for the GPUs we know; None on CPU or unknown devices (MFU is then omitted)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def throughput(tokens: int, seconds: float, tokens_per_step: int, flops_per_token: float, ranks: int,
               peak_tflops: float | None) -> dict[str, float]:
    """tokens/s (all ranks), seconds per step, achieved TFLOP/s per rank and, with a known peak, MFU."""
    out = {"tokens_per_s": tokens / seconds, "step_time": seconds * tokens_per_step / tokens}
    out["tflops"] = out["tokens_per_s"] * flops_per_token / ranks / 1e12
    if peak_tflops:
        out["mfu"] = out["tflops"] / peak_tflops
    return out


def memory_gb() -> float:
    """Peak accelerator memory allocated, or this process's peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _truncate_after(path: Path, step: int) -> None:
    """Drop records past `step` (left by a run that crashed after its last checkpoint) before resuming, and
    lines that do not parse (a process killed mid-write leaves a torn last line), with a warning."""
    if not path.is_file():
        return
    from storage.io import atomic_write_text

    kept, torn = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            torn.append(number)
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    if torn:
        log.warning("%s: dropped line(s) %s that do not parse (a write cut short)", path, torn)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricsLogger:
    """Rank-0 sink for one run's metrics. Other ranks get a logger whose calls do nothing.

    Records past `start_step` (left by a run that died after its last checkpoint) are dropped on open, so a
    resumed run's metrics.jsonl holds each step once."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool,
                 tensorboard: bool = True, progress: str = "auto", wandb: WandbConfig | None = None,
                 config: dict[str, Any] | None = None):
        self.enabled = enabled
        self.total_steps = total_steps
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._wandb = None
        self._start = time.time()
        self._start_step = start_step
        self._path = run_dir / run_files.METRICS
        if not enabled:
            return
        _truncate_after(self._path, start_step)
        self._jsonl = open(self._path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1)
        if wandb is not None and wandb.project:
            self._wandb = open_wandb(run_dir, wandb, config or {})
        mode = ("bar" if sys.stderr.isatty() else "plain") if progress == "auto" else progress
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        self._plain = mode == "plain"

    def rewind(self, step: int) -> None:
        """Forget records past `step` (after a rollback to the checkpoint of that step)."""
        if self.enabled:
            self._jsonl.close()
            _truncate_after(self._path, step)
            self._jsonl = open(self._path, "a", buffering=1)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in record.items()}
        self._jsonl.write(json.dumps(record) + "\n")
        step = record["step"]
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        summary = {k: record[k] for k in ("loss", "val/loss", "lr", "tokens_per_s", "mfu") if k in record}
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in summary.items()}, refresh=False)
        elif self._plain:
            elapsed = time.time() - self._start
            done = max(1, step - self._start_step)
            eta = elapsed / done * (self.total_steps - step)
            fields = " ".join(f"{k}={v:.4g}" for k, v in summary.items())
            log.info("step %d/%d %s eta=%.0fs", step, self.total_steps, fields, eta)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()
        if self._bar:
            self._bar.close()
        if self._wandb:
            self._wandb.finish()


def open_wandb(run_dir: Path, settings: WandbConfig, config: dict[str, Any]):
    """A W&B run writing under `<run>/wandb/`; its id is kept in `<run>/wandb_id`, so a resumed run (or a
    requeued job) continues the same W&B run instead of starting a new one."""
    import wandb

    from storage.io import atomic_write_text

    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    atomic_write_text(id_file, run_id)
    return wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode, dir=str(run_dir),
                      id=run_id, resume="allow", name=run_dir.name, config=config,
                      settings=wandb.Settings(console="off"))  # our own log lines stay as they are


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


# ---- where the loop's wall time goes ----------------------------------------------------------------
T = TypeVar("T")

EXCLUDED = ("checkpoint", "hook/Validation")
"""Phases a training throughput leaves out (reported apart): saves and held-out evaluation."""


class PhaseTimes:
    """Seconds per named phase, summed over the steps of one `fit` (phases must not nest): what a launched run
    pays beyond the step. Host wall time (perf_counter): on a GPU, queued work shows up in whichever phase waits
    for it (the metrics' `.tolist()` on log steps). Rank 0 writes the totals to the run's `timing.json`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def run(self, phase: str, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args), its time charged to `phase`."""
        with self(phase):
            return fn(*args)

    def summary(self, steps: int, tokens: int) -> dict[str, Any]:
        """Totals, the loop's wall time, the unattributed rest, and the throughput over the training phases."""
        wall = time.perf_counter() - self._start
        phases = dict(sorted(self.seconds.items()))
        phases["other"] = max(0.0, wall - sum(phases.values()))
        training = wall - sum(phases.get(name, 0.0) for name in EXCLUDED)
        return {"steps": steps, "tokens": tokens, "wall_s": wall, "training_s": training,
                "tokens_per_s": tokens / training if training > 0 else float("nan"), "phases_s": phases}


def report_times(times: PhaseTimes, run_dir: Path, steps: int, tokens: int, ranks: int) -> None:
    """Write `timing.json` and log one line (rank 0 calls it once training ends)."""
    if steps == 0:
        return
    summary = {**times.summary(steps, tokens), "ranks": ranks}
    atomic_write_json(run_dir / run_files.TIMING, summary)
    log.info("time: %d steps in %.1f s (%.4g tokens/s over training): %s", steps, summary["wall_s"],
             summary["tokens_per_s"], describe(summary))


def describe(summary: dict[str, Any]) -> str:
    """One log line: the largest phases as shares of the loop's wall time."""
    wall = summary["wall_s"] or float("nan")
    shares = sorted(summary["phases_s"].items(), key=lambda kv: -kv[1])
    return " ".join(f"{name}={seconds / wall:.1%}" for name, seconds in shares if seconds / wall >= 0.005)
