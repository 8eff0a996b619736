"""The launcher builds the right deepspeed command and refuses bad input before any rank starts."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launching import ROOT, command, environment


def run_launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.process
def test_dry_run_prints_deepspeed_command():
    out = run_launch("--num_gpus", "2", "--master_port", "29999", "--dry-run", "configs/tiny.yaml", "train.steps=5")
    assert out.returncode == 0, out.stderr
    cmd = out.stdout.strip()
    assert "deepspeed --num_gpus 2 --master_port 29999 --module pretrain configs/tiny.yaml train.steps=5" in cmd
    assert "DS_ACCELERATOR=cpu" in cmd  # no GPU here: CPU ranks over gloo


@pytest.mark.process
def test_multinode_options_pass_through(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    out = run_launch("--hostfile", str(hostfile), "--num_nodes", "2", "--no_ssh", "--node_rank", "1",
                     "--master_addr", "10.0.0.1", "--dry-run", "configs/tiny.yaml")
    assert out.returncode == 0, out.stderr
    for part in (f"--hostfile {hostfile}", "--num_nodes 2", "--node_rank 1", "--no_ssh", "--master_addr 10.0.0.1"):
        assert part in out.stdout


@pytest.mark.distributed
def test_bad_config_refused_before_ranks_start(tmp_path):
    out = run_launch("--num_gpus", "2", "configs/tiny.yaml", "train.stpes=3", f"run.out_dir={tmp_path}")
    assert out.returncode == 2
    assert "train.stpes" in out.stderr and "steps" in out.stderr
    assert "deepspeed" not in out.stdout.lower() and "Launching" not in out.stderr  # no launcher was run
    assert not any(tmp_path.iterdir())


@pytest.mark.process
def test_include_with_num_gpus_is_refused():
    out = run_launch("--num_gpus", "2", "--include", "localhost:0", "--dry-run", "configs/tiny.yaml")
    assert out.returncode != 0 and "--include" in out.stderr


@pytest.mark.distributed
@pytest.mark.parametrize("skip_check", [False, True], ids=["checked", "skip-check"])
def test_a_stale_extension_build_lock_is_named_instead_of_hanging(tmp_path, skip_check):
    """A process killed mid JIT build leaves the lock; a lock younger than a build may take is left alone. The
    ranks refuse it too, for launches that skip the launcher's check (the tests' launches do)."""
    stale, fresh = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock", tmp_path / "py311_cpu" / "other_op" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    skip = ["--skip-check"] if skip_check else []
    out = subprocess.run([sys.executable, "-m", "launch", "--num_gpus", "2", *skip, "configs/tiny.yaml",
                          f"run.out_dir={tmp_path / 'runs'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path)))
    assert out.returncode != 0 if skip_check else out.returncode == 2  # DeepSpeed's launcher reports the ranks' 2
    assert f"{stale} is a torch-extension build lock 60 min old" in out.stderr and f"rm {stale}" in out.stderr
    assert str(fresh) not in out.stderr


def test_each_python_environment_builds_its_ops_in_its_own_directory(monkeypatch):
    """Two venvs (two clones) must not share a build directory; a directory the user set is kept."""
    from launch.command import extensions_dir, launch_env

    assert extensions_dir("/a/.venv") != extensions_dir("/b/.venv")
    assert extensions_dir("/a/.venv") == extensions_dir("/a/.venv")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert launch_env(2, gpus=False)["TORCH_EXTENSIONS_DIR"] == str(extensions_dir())
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/mine")
    assert launch_env(2, gpus=False)["TORCH_EXTENSIONS_DIR"] == "/mine"


@pytest.mark.distributed
def test_cpu_runs_leave_no_shared_memory_behind(runs_root):
    """DeepSpeed's CPU comm op never unlinks its ~70 MB per-rank /dev/shm buffers; the trainer does. The buffers
    are named by the rendezvous port, so a fixed one tells this run's from those of runs other workers launch."""
    from launch.command import free_port

    port = free_port()
    cmd = command(runs_root / "shm_check", ["train.steps=2", "eval.every=0", "monitors.jump.every=0"],
                  launcher_args=["--num_gpus", "2", "--skip-check", "--master_port", str(port)])
    proc = subprocess.run(cmd, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2/2" in proc.stderr + proc.stdout  # it trained, so its ranks made buffers
    assert sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*")) == []
