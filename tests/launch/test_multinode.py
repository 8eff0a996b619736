"""Two nodes for real, on loopback: two `python -m launch --no_ssh --node_rank N` invocations form one job."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from launch.command import free_port
from launching import ROOT, ZERO_RUN, command, environment, losses

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # two launchers and a resume: ~25 s


def two_nodes(run, hostfile, overrides) -> None:
    """Start node 0 and node 1 (one rank each) and wait for both."""
    port = str(free_port())
    procs = [subprocess.Popen(command(run, overrides, launcher_args=[
        "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node), "--master_addr", "127.0.0.1",
        "--master_port", port]), cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for node in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for node, (proc, out) in enumerate(zip(procs, outs)):
        assert proc.returncode == 0, f"node {node} failed:\n{out[-4000:]}"


@pytest.mark.numerics
def test_two_nodes_train_checkpoint_and_resume_like_one_node(zero_runs, runs_root, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    run = runs_root / "two_nodes"
    overrides = ["deepspeed.zero_stage=1", *ZERO_RUN]
    two_nodes(run, hostfile, overrides)
    one_node = losses(zero_runs[1])
    assert losses(run) == pytest.approx(one_node, rel=1e-6, abs=1e-6)  # the same job, ranks on two "hosts"
    # resume across nodes: back to the step-3 checkpoint, continue to the end
    ckpts = run / "checkpoints"
    shutil.rmtree(ckpts / "step_6")
    (ckpts / "latest").write_text("step_3\n")
    two_nodes(run, hostfile, overrides)
    resumed = losses(run)
    assert sorted(resumed) == sorted(one_node)
    assert [resumed[s] for s in (4, 5, 6)] == pytest.approx([one_node[s] for s in (4, 5, 6)], rel=1e-6, abs=1e-6)
