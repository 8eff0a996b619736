#!/usr/bin/env python
"""The chaos harness, a test tool beside the fault hooks it drives (tests/fault_injection.py; run by
tests/pretrain/test_chaos.py and by hand): faults at random, seeded moments over one run, each followed by a
restart with `train.resume=auto`, until the run finishes; then the run is compared with an unbroken run of the
same config.

    python tests/chaos.py --faults 30 --seed 0                    # tiny config, 2 CPU ranks
    python tests/chaos.py --faults 8 --kinds kill_rank,sigterm --steps 40 model.n_layers=4

Faults (each at a random step, after a random fraction of a step, so some land inside a save):
  kill_rank           SIGKILL of one rank             kill_all     SIGKILL of every rank
  kill_launcher       SIGKILL of `python -m launch`'s whole process group (the ranks must stop by themselves)
  sigterm             SIGTERM to the process group (preemption: save, exit 0)
  stop_rank           SIGSTOP of one rank until the collective timeout fails the run
  disk_full           ENOSPC while a checkpoint is written (a fault hook in torch.save, tests/fault_injection.py:
                      filling a real file system needs root or a loop mount, which CI machines lack)
  corrupt_checkpoint  the run is killed, then a file of its latest checkpoint is truncated or bit-flipped
  resize              the run is killed and restarted on 1 rank; the next restart returns to --ranks
The report: faults by kind, restarts, steps recomputed, wall time lost, and whether the final losses,
metrics.jsonl (every step once) and final weights equal the unbroken run's: bitwise when the world size never
changed, else the step count and data position exactly and losses within --tolerance. Exit code 1 when the
broken run differs.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from launch.command import launch_argv
from storage import folders, pickles, retention, run_files
from storage.weights import consolidated_state_dict

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("kill_rank", "kill_all", "kill_launcher", "sigterm", "stop_rank", "disk_full", "corrupt_checkpoint",
         "resize")
RUN = ["train.precision=fp32", "log.every=1", "eval.every=0", "monitors.jump.every=0", "checkpoint.every=4",
       "checkpoint.keep=3", "checkpoint.fallback=true", "deepspeed.collective_timeout_s=10",
       "imports=[fault_injection]"]
"""Every step logged (so progress is visible), frequent saves, the fallback a corrupted checkpoint needs, and
the fault hooks module (inert unless GROWLM_FAULT names a fault)."""


@dataclass
class Chaos:
    """The broken run's state across attempts."""

    run: Path
    config: str
    overrides: list[str]
    ranks: int
    rng: random.Random
    log: Path
    restarts: int = 0
    recomputed: int = 0
    injected: Counter = field(default_factory=Counter)
    resized: bool = False

    def start(self, ranks: int, fault_env: str = "") -> subprocess.Popen:
        """One attempt: `python -m launch` in a session of its own (so a group signal reaches only this job)."""
        env = dict(os.environ, GROWLM_FAULT=fault_env, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"),
                                                                                  os.environ.get("PYTHONPATH", "")]))
        with open(self.log, "a") as out:
            out.write(f"\n===== attempt {self.restarts + 1} on {ranks} rank(s), fault {fault_env or '-'}\n")
            out.flush()
            return subprocess.Popen(launch_argv(self.config, self.overrides, ranks), cwd=ROOT, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def progress(run: Path, since: float = 0.0) -> int:
    """The last step metrics.jsonl records, counting only a file written after `since` (a time): an attempt's
    first write rewinds the records a killed attempt left beyond its checkpoint."""
    path = run / run_files.METRICS
    if not path.is_file() or path.stat().st_mtime < since:
        return 0
    return max((r.get("step", 0) for r in run_files.read_records(path)), default=0)


def resumed_step(run: Path) -> int:
    """The step the next attempt resumes from: the checkpoint the trainer's own rule picks (with the fallback a
    corrupted checkpoint needs)."""
    try:
        ckpt = retention.resumable(run / "checkpoints", fallback=True)
    except folders.CheckpointError:  # none verifies: the run starts over
        return 0
    return folders.step_of(ckpt) if ckpt else 0


def job_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def ranks_of(job: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in job:
        try:
            if any(a.startswith("--local_rank") for a in p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def wait_until(run: Path, proc: subprocess.Popen, step: int, since: float, timeout: float = 600) -> bool:
    """Until this attempt's metrics reach `step`; False if the attempt ended first."""
    deadline = time.time() + timeout
    while progress(run, since) < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return progress(run, since) >= step


def end(proc: subprocess.Popen, job: list[psutil.Process], timeout: float = 180) -> None:
    """Wait for every process of the attempt to end (a rank stopped by SIGSTOP is killed: it cannot exit)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    _, alive = psutil.wait_procs(job, timeout=timeout)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=30)


def verifies(ckpt: Path) -> bool:
    try:
        folders.verify(ckpt)
        return True
    except folders.CheckpointError:
        return False


def corrupt(run: Path, rng: random.Random) -> str:
    """Truncate or bit-flip one file of the checkpoint the next attempt would resume from, when an older one
    verifies (else no run could go on); what was done."""
    ckpt = retention.resumable(run / "checkpoints", fallback=True)
    older = [c for s, c in folders.complete_checkpoints(run / "checkpoints") if ckpt and s < folders.step_of(ckpt)]
    if ckpt is None or not any(verifies(c) for c in older):
        return "no older intact checkpoint: left intact"
    victim = rng.choice(sorted(p for p in ckpt.rglob("*.pt") if p.stat().st_size > 0))
    data = bytearray(victim.read_bytes())
    if rng.random() < 0.5:
        victim.write_bytes(bytes(data[: len(data) // 2]))
        return f"truncated {victim.relative_to(run)}"
    i = rng.randrange(len(data))
    data[i] ^= 0xFF
    victim.write_bytes(bytes(data))
    return f"flipped byte {i} of {victim.relative_to(run)}"


def inject(chaos: Chaos, kind: str, steps: int, faults_left: int) -> str:
    """Run one attempt and inject `kind` at a random step ahead of the resumed one, spacing the faults left over
    the steps left; a note of what happened."""
    start = resumed_step(chaos.run)
    target = min(steps - 1, start + chaos.rng.randint(1, max(1, 2 * (steps - start) // (faults_left + 1))))
    if target <= start:
        return "skipped: the run is at its end"
    ranks = 1 if kind == "resize" else chaos.ranks
    fault_env = ""
    if kind == "disk_full":  # the first save at or after the target fails
        save_step = -(-target // 4) * 4
        fault_env = f"enospc_in_save:{save_step}" if save_step < steps else ""
    started = time.time()
    proc = chaos.start(ranks, fault_env)
    chaos.restarts += 1
    reached = wait_until(chaos.run, proc, target, started)
    job = job_processes(proc)
    note = f"{kind} at step {progress(chaos.run, started)}"
    if reached and kind != "disk_full":
        time.sleep(chaos.rng.uniform(0, 0.3))  # somewhere in the next step or its save
        ranks_now = ranks_of(job)
        if kind == "kill_rank" and ranks_now:
            chaos.rng.choice(ranks_now).kill()
        elif kind in ("kill_all", "corrupt_checkpoint", "resize"):
            for p in ranks_now:
                p.kill()
        elif kind == "kill_launcher":
            os.killpg(proc.pid, signal.SIGKILL)
        elif kind == "sigterm":
            os.killpg(proc.pid, signal.SIGTERM)
        elif kind == "stop_rank" and ranks_now:
            stopped = chaos.rng.choice(ranks_now)
            stopped.suspend()  # its peers' next collective times out and fails the run
            psutil.wait_procs([r for r in ranks_now if r != stopped], timeout=120)
            stopped.kill()  # a stopped process takes no other signal: end it, as a scheduler would
    end(proc, job)
    if kind == "corrupt_checkpoint":
        note += "; " + corrupt(chaos.run, chaos.rng)
    chaos.resized |= kind == "resize"
    chaos.recomputed += max(0, progress(chaos.run, started) - resumed_step(chaos.run))
    chaos.injected[kind] += 1
    return f"{note} -> exit {proc.returncode}, resumes from step {resumed_step(chaos.run)}"


def run_to_end(chaos: Chaos, steps: int) -> None:
    """Restart (on --ranks) until the run has finished, at most 3 times."""
    for _ in range(3):
        if resumed_step(chaos.run) >= steps:
            return
        proc = chaos.start(chaos.ranks)
        chaos.restarts += 1
        end(proc, job_processes(proc), timeout=3600)
    if resumed_step(chaos.run) < steps:
        raise SystemExit(f"error: the broken run did not finish; see {chaos.log}")


def records(run: Path) -> list[dict]:
    return [r for r in run_files.metrics(run) if "loss" in r]


def sampler_state(run: Path) -> dict:
    """The data position the final checkpoint records (rank 0's model-state file; weights-only load)."""
    ckpt = folders.latest(run / "checkpoints")
    state_file = next(ckpt.glob("*model_states.pt"))
    with torch.serialization.safe_globals(pickles.deepspeed_classes()):
        return torch.load(state_file, map_location="cpu", weights_only=True)["sampler"]


def compare(broken: Path, reference: Path, exact: bool, tolerance: float) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) rows."""
    ours, theirs = records(broken), records(reference)
    steps = [r["step"] for r in ours]
    rows = [("metrics.jsonl: every step once", steps == [r["step"] for r in theirs],
             f"{len(steps)} records, {len(set(steps))} distinct, last {max(steps, default=0)}")]
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(ours, theirs)]
    worst = max(diffs, default=float("inf"))
    rows.append(("losses " + ("bitwise" if exact else f"within {tolerance:g}"),
                 len(ours) == len(theirs) and (worst == 0.0 if exact else worst <= tolerance),
                 f"max |diff| {worst:.3g}"))
    a, b = sampler_state(broken), sampler_state(reference)
    rows.append(("data position (final sampler state)", a == b, f"{a} vs {b}"))
    wa = consolidated_state_dict(folders.latest(broken / "checkpoints"))
    wb = consolidated_state_dict(folders.latest(reference / "checkpoints"))
    worst_w = max((float((wa[k].float() - wb[k].float()).abs().max()) for k in wb), default=float("inf"))
    rows.append(("final weights " + ("bitwise" if exact else "(reported)"),
                 wa.keys() == wb.keys() and (worst_w == 0.0 if exact else True), f"max |diff| {worst_w:.3g}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", type=int, default=30, help="faults to inject")
    p.add_argument("--seed", type=int, default=0, help="seeds the kinds, steps and moments of the faults")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--steps", type=int, default=0, help="training steps (default: 4 per fault, at least 24)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="folder for both runs (default: runs/chaos-s<seed>)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="loss tolerance once the world size changed")
    p.add_argument("overrides", nargs="*", help="key=value overrides of both runs")
    args = p.parse_args(argv)
    kinds = args.kinds.split(",")
    if bad := sorted(set(kinds) - set(KINDS)):
        p.error(f"--kinds: unknown {bad}; valid: {', '.join(KINDS)}")
    steps = args.steps or max(24, 4 * args.faults)
    out = (args.out or ROOT / "runs" / f"chaos-s{args.seed}").resolve()
    if out.exists():
        p.error(f"--out {out} exists; give a new folder")
    out.mkdir(parents=True)
    overrides = [*RUN, f"train.steps={steps}", f"run.out_dir={out}", *args.overrides]
    rng = random.Random(args.seed)

    t0 = time.time()
    reference = Chaos(out / "unbroken", args.config, [*overrides, "run.name=unbroken"], args.ranks, rng,
                      out / "unbroken.log")
    run_to_end(reference, steps)
    unbroken_s = time.time() - t0

    t0 = time.time()
    chaos = Chaos(out / "broken", args.config, [*overrides, "run.name=broken"], args.ranks, rng, out / "broken.log")
    for i in range(args.faults):
        note = inject(chaos, rng.choice(kinds), steps, args.faults - i)
        print(f"[{i + 1}/{args.faults}] {note}", flush=True)
    run_to_end(chaos, steps)
    broken_s = time.time() - t0

    rows = compare(chaos.run, reference.run, exact=not chaos.resized, tolerance=args.tolerance)
    lines = [f"# Chaos run: seed {args.seed}, {args.faults} faults, {steps} steps, {args.ranks} ranks", "",
             "| fault | injected |", "|---|---:|", *(f"| {k} | {chaos.injected[k]} |" for k in KINDS if k in kinds),
             "", f"restarts {chaos.restarts}; steps recomputed {chaos.recomputed}; wall time: unbroken "
             f"{unbroken_s:.0f} s, broken {broken_s:.0f} s (lost {broken_s - unbroken_s:.0f} s)", "",
             "| check | equal | detail |", "|---|---|---|",
             *(f"| {name} | {'yes' if ok else 'NO'} | {detail} |" for name, ok, detail in rows)]
    report = "\n".join(lines) + "\n"
    (out / "chaos.md").write_text(report)
    print(report)
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
