"""Faults injected into real runs (tests/fault_injection.py): nothing completed is lost, errors are clear.

Single-process runs (`python -m pretrain`, world size 1) where the fault does not need two ranks; the
2-rank faults go through the real launcher and are compared with the uninterrupted `zero_runs`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from pretrain.config import load_config
from storage import folders, weights

from launching import ROOT, ZERO_RUN, ZERO_RUN_STEPS, command, environment, launch, losses, metrics

SHORT = ["train.steps=4", "checkpoint.every=2", "checkpoint.keep=3", "eval.every=0", "monitors.jump.every=0"]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def killed_in_save(runs_root) -> tuple[Path, dict[str, str]]:
    """A run killed while writing its step-4 checkpoint; the digest of step_2 taken right after."""
    run = runs_root / "killed_in_save"
    proc = launch(run, SHORT, ranks=None, check=False, fault="kill_in_save:4")
    assert proc.returncode != 0
    return run, digest(run / "checkpoints" / "step_2")


@pytest.fixture(scope="module")
def uninterrupted(runs_root) -> Path:
    """The SHORT run, never broken: what every interrupted single-process run must end equal to."""
    run = runs_root / "uninterrupted_single"
    launch(run, SHORT, ranks=None)
    return run


@pytest.mark.process
def test_kill_during_checkpoint_write_keeps_latest_on_previous(killed_in_save):
    run, step2 = killed_in_save
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_2"
    assert (ckpts / "step_4").is_dir() and not (ckpts / "step_4" / "manifest.json").exists()  # partial
    assert [step for step, _ in folders.complete_checkpoints(ckpts)] == [2]
    with pytest.raises(folders.CheckpointError, match="manifest.json is missing"):
        folders.verify(ckpts / "step_4")


@pytest.mark.numerics
@pytest.mark.process
def test_resume_after_kill_in_save_replaces_the_partial_checkpoint(killed_in_save, runs_root, uninterrupted):
    run, step2 = killed_in_save
    resumed = runs_root / "killed_in_save_resumed"
    shutil.copytree(run, resumed)
    launch(resumed, SHORT, ranks=None)
    assert folders.latest(resumed / "checkpoints").name == "step_4"
    assert digest(resumed / "checkpoints" / "step_2") == step2  # nothing earlier was touched
    assert losses(resumed) == losses(uninterrupted)


@pytest.mark.process
def test_truncated_checkpoint_is_named_and_fallback_resumes_the_previous(runs_root):
    run = runs_root / "truncated"
    launch(run, SHORT, ranks=None)
    victim = max((run / "checkpoints" / "step_4").glob("*.pt"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    more = [*SHORT[1:], "train.steps=6"]
    refused = launch(run, more, ranks=None, check=False)
    assert refused.returncode == 2 and victim.name in refused.stderr and "checkpoint.fallback" in refused.stderr
    launch(run, [*more, "checkpoint.fallback=true"], ranks=None)
    steps = [r["step"] for r in metrics(run) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # continued from step 2; the records after it were replaced, not repeated


@pytest.mark.numerics
@pytest.mark.process
def test_out_of_disk_while_saving_stops_naming_the_space_and_the_resume_is_exact(runs_root, uninterrupted):
    """The disk fills while step 4 is written (a fault hook makes torch.save raise ENOSPC: a real full file
    system needs root or a loop mount, which CI lacks): the run stops with one line naming the directory, the
    free space and what a checkpoint takes; latest still names step 2; once space is back, the resume ends
    equal to the run that never failed."""
    run = runs_root / "disk_full"
    proc = launch(run, SHORT, ranks=None, check=False, fault="enospc_in_save:4")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert f"no space left on the device of {run / 'checkpoints'} while saving step_4" in errors[0]
    assert "MiB free; the last complete checkpoint (step_2) takes" in errors[0]
    assert "latest still names step_2, which is intact" in errors[0]
    assert folders.latest(run / "checkpoints").name == "step_2"  # verifies: complete and untouched
    assert not (run / "checkpoints" / "step_4" / "manifest.json").exists()
    launch(run, SHORT, ranks=None)
    assert losses(run) == losses(uninterrupted)


@pytest.mark.process
@pytest.mark.parametrize("override, named", [
    ("model.n_layers=3", "model.n_layers: checkpoint 2, config 3"),
    ("deepspeed.zero_stage=3", "deepspeed.zero_stage: checkpoint 1, config 3"),
    ("train.precision=bf16", "train.precision: checkpoint 'fp32', config 'bf16'"),
    ("train.optimizer=sgd", "train.optimizer: checkpoint 'adamw', config 'sgd'"),  # was KeyError 'momentum' later
    ("data.seq_len=16", "data.seq_len: checkpoint 32, config 16"),
    ("data.val_fraction=0.1", "data.val_fraction: checkpoint 0.05, config 0.1"),
])
def test_resuming_with_a_different_shape_or_layout_is_refused_before_any_rank_starts(killed_in_save, override,
                                                                                     named):
    run, _ = killed_in_save
    proc = subprocess.run([*command(run, [*SHORT, override], ranks=None), "--check"], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "cannot resume from" in proc.stderr and named in proc.stderr, proc.stderr


@pytest.mark.process
def test_resuming_with_another_global_batch_is_refused_naming_it(killed_in_save):
    """The pre-launch check cannot know the world size; the ranks refuse a changed global batch themselves."""
    run, step2 = killed_in_save
    proc = launch(run, [*SHORT, "train.micro_batch_size=2"], ranks=None, check=False)
    assert proc.returncode == 2 and "cannot resume from" in proc.stderr
    assert "global batch (train.micro_batch_size x train.grad_accum x ranks): checkpoint 4, config 2" in proc.stderr
    assert digest(run / "checkpoints" / "step_2") == step2  # nothing written


@pytest.mark.process
@pytest.mark.parametrize("policy", ["skip", "stop", "rollback"])
def test_nonfinite_policies(runs_root, policy):
    run = runs_root / f"nan_{policy}"
    proc = launch(run, [*SHORT, f"train.on_nonfinite={policy}"], ranks=None, check=False, fault="nan_at:3")
    if policy == "stop":
        assert proc.returncode != 0
        assert "step 3: non-finite" in proc.stderr and "train.on_nonfinite=stop" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["step"]: r for r in metrics(run) if "loss" in r}
    final = weights.load_weights(run / "checkpoints" / "step_4")[1]
    assert all(np.isfinite(t.numpy()).all() for t in final.values())  # the NaN update was never applied
    if policy == "skip":
        assert not np.isfinite(records[3]["grad_norm"]) and records[4]["nonfinite_steps"] == 1
    else:  # rollback: back to step 2, the window of step 3 skipped, so step 3 trains on the next window
        assert "rolling back" in proc.stderr and np.isfinite(records[3]["loss"])
        assert sorted(records) == [1, 2, 3, 4]


@pytest.mark.process
def test_a_requeued_run_skips_the_window_it_rolled_back_from(runs_root, tmp_path):
    """Killed after a rollback but before its next checkpoint, a run restarts from the checkpoint it rolled back
    to: it must skip the bad window at once (not roll back again, nor reset its count and loop)."""
    run, memo = runs_root / "nan_requeued", tmp_path / "bad_window.json"
    rollback = [*SHORT, "train.on_nonfinite=rollback"]
    proc = launch(run, rollback, ranks=None, check=False, fault=f"nan_at:3:{memo},kill_rank:0:4")
    assert proc.returncode != 0 and "rolling back" in proc.stderr
    assert folders.latest(run / "checkpoints").name == "step_2"  # killed before saving step 4
    saved = json.loads((run / "faults.json").read_text())
    assert saved["skip_windows"] == [json.loads(memo.read_text())] and saved["nonfinite_steps"] == 1
    proc = launch(run, rollback, ranks=None, check=False, fault=f"nan_at:3:{memo}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rolling back" not in proc.stderr and "skipping 1 batch window" in proc.stderr
    assert all(np.isfinite(r["loss"]) for r in metrics(run) if "loss" in r)


@pytest.mark.numerics
@pytest.mark.distributed
def test_rank_killed_mid_training_resumes_to_the_same_losses(zero_runs, runs_root):
    run = runs_root / "rank_killed"
    proc = launch(run, ["deepspeed.zero_stage=1", *ZERO_RUN], check=False, fault="kill_rank:1:5")
    assert proc.returncode != 0
    assert folders.latest(run / "checkpoints").name == "step_3"
    launch(run, ["deepspeed.zero_stage=1", *ZERO_RUN])
    full, resumed = losses(zero_runs[1]), losses(run)
    assert resumed == full  # every step, bitwise (fp32 on CPU), with no repeated or missing records


@pytest.mark.distributed
def test_preemption_signal_saves_and_exits_zero_and_the_run_dir_is_locked_meanwhile(runs_root):
    run = runs_root / "preempted"
    proc = subprocess.Popen(command(run, ["train.steps=1000", "eval.every=0", "monitors.jump.every=0",
                                          "checkpoint.every=1000"]),
                            cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "metrics.jsonl").exists() or len(metrics(run)) < 3:
        time.sleep(0.5)
    # A second run into the same directory is refused, naming the holder, before it writes anything: by the
    # launcher's check, and by the trainer itself when started without the launcher.
    config_before = (run / "config.yaml").read_bytes()
    for ranks in (2, None):
        second = launch(run, ["train.steps=1000"], ranks=ranks, check=False, precheck=True)
        assert second.returncode != 0 and f"run directory {run} is in use by host {socket.gethostname()}, pid" \
            in second.stderr, second.stderr[-2000:]
    assert (run / "config.yaml").read_bytes() == config_before
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    last = max(r["step"] for r in metrics(run))
    assert 3 <= last < 1000
    assert folders.latest(run / "checkpoints").name == f"step_{last}"


@pytest.mark.distributed
def test_when_the_launch_process_is_killed_its_ranks_save_and_exit(runs_root, tmp_path):
    """`kill -KILL -- -PGID` of the launch (as the OOM killer or a scheduler's escalation would): DeepSpeed's
    launcher and the ranks live in a session of their own and would train on holding the run directory. Each
    rank notices the launch is gone, saves at the end of its step and exits; every process of the job ends."""
    import psutil

    run = runs_root / "launch_killed"
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command(run, ["train.steps=1000", "eval.every=0", "monitors.jump.every=0",
                                              "checkpoint.every=1000"]),
                                cwd=ROOT, env=environment(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "metrics.jsonl").exists() or len(metrics(run)) < 3:
        time.sleep(0.5)
    job = psutil.Process(proc.pid).children(recursive=True)
    assert sum("--local_rank" in " ".join(p.cmdline()) for p in job) == 2
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(job, timeout=120)
    assert not alive, [p.cmdline() for p in alive]
    last = max(r["step"] for r in metrics(run))
    assert 3 <= last < 1000
    assert folders.latest(run / "checkpoints").name == f"step_{last}"
    assert "the launch process (pid " in log.read_text()


@pytest.mark.distributed
def test_a_stopped_rank_fails_the_run_naming_it_within_the_collective_timeout(runs_root):
    """`kill -STOP` on rank 1 mid-training: rank 0's next collective gives up after deepspeed.collective_timeout_s
    and the run fails naming rank 1 and the step, instead of hanging for DeepSpeed's 10 minutes."""
    import threading

    import psutil

    run = runs_root / "stopped_rank"
    proc = subprocess.Popen(command(run, ["train.steps=1000", "eval.every=0", "monitors.jump.every=0",
                                          "checkpoint.every=1000", "deepspeed.collective_timeout_s=5"]),
                            cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    stopped = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (run / "metrics.jsonl").exists() or len(metrics(run)) < 3:
            time.sleep(0.5)
        stopped = [p for p in psutil.Process(proc.pid).children(recursive=True) if "--local_rank=1" in p.cmdline()]
        assert len(stopped) == 1
        stopped[0].suspend()  # SIGSTOP
        stopped_at = time.time()
        while time.time() - stopped_at < 120 and not any("a collective waited" in line for line in lines):
            time.sleep(0.2)
        named_after = time.time() - stopped_at
    finally:
        for p in stopped:  # a stopped process takes no SIGTERM: end it, as a scheduler would
            p.kill()
        proc.wait(timeout=120)
    out = "".join(lines)
    assert proc.returncode != 0
    assert "error: rank 0: a collective waited more than 5 s (deepspeed.collective_timeout_s) at step" in out, out[-3000:]
    assert "it waited for rank 1 (silent for" in out, out[-3000:]
    assert named_after < 60  # seconds, not DeepSpeed's 10 minutes


@pytest.mark.slow  # the save must outlast DeepSpeed's 30 s kill timer
@pytest.mark.distributed
def test_a_signal_to_the_process_group_lets_a_long_save_complete(runs_root):
    """Ctrl-C or a scheduler signals the launch's whole process group: DeepSpeed's launcher would SIGKILL the
    ranks 30 s later. It runs in a session of its own, so only `python -m launch` gets the signal and passes it
    to the ranks, whose 35 s save completes."""
    run = runs_root / "group_signal"
    proc = subprocess.Popen(command(run, ["train.steps=1000", "eval.every=0", "monitors.jump.every=0",
                                          "checkpoint.every=1000", "imports=[fault_injection]"]),
                            cwd=ROOT, env=environment("slow_save:35"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "metrics.jsonl").exists() or len(metrics(run)) < 3:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as a terminal or a scheduler does
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    last = max(r["step"] for r in metrics(run))
    assert folders.latest(run / "checkpoints").name == f"step_{last}"  # complete: manifest written after 35 s


@pytest.mark.distributed
@pytest.mark.slow  # grad_accum derived in-process: test_run_components.py; chaos.py's resize fault
def test_resume_on_fewer_ranks_continues_the_sample_sequence(zero_runs, runs_root):
    """2 ranks -> 1 rank with no batch setting changed: grad_accum 2 is derived to keep the global batch (and
    recorded in the run's config), DeepSpeed universal conversion happens automatically; samples continue the
    planned order with no repeat or gap; losses follow the 2-rank run.
    Tolerance 1e-4: both average the same 8 sequences' gradients, only the reduction order differs (fp32
    rounding, ~1e-6 relative), which compounds over a few AdamW steps."""
    run = runs_root / "two_to_one"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(zero_runs[1] / "checkpoints" / "step_3", run / "checkpoints" / "step_3")
    (run / "checkpoints" / "latest").write_text("step_3\n")
    shutil.copy(zero_runs[1] / "metrics.jsonl", run / "metrics.jsonl")
    record = run / "samples"
    proc = launch(run, ["deepspeed.zero_stage=1", *ZERO_RUN], ranks=1, fault=f"record_samples:{record}")
    assert "train.grad_accum 1 -> 2 keeps its global batch of 8" in proc.stdout + proc.stderr
    assert load_config(run / "config.yaml").train.grad_accum == 2
    seen = [idx for line in (record / "rank_0.jsonl").read_text().splitlines() for mb in json.loads(line)
            for idx in mb]
    done_steps = int(json.loads((zero_runs[1] / "checkpoints" / "step_3" / "manifest.json").read_text())["step"])
    global_batch = 4 * 2  # micro 4 x 2 ranks, as in the 2-rank phase
    from pretrain.data import prepare_data

    cfg = load_config(zero_runs[1] / "config.yaml")
    windows = len(prepare_data(cfg.data, cfg.model.vocab_size).train)
    planned = np.random.default_rng([cfg.run.seed, 0]).permutation(windows)  # epoch 0's order
    assert seen == planned[done_steps * global_batch: ZERO_RUN_STEPS * global_batch].tolist()
    two, one = losses(zero_runs[1]), losses(run)
    for step in range(4, ZERO_RUN_STEPS + 1):
        assert abs(one[step] - two[step]) < 1e-4, (step, one[step], two[step])
