"""`python -m launch [--num_gpus N] [--num_nodes N] [--hostfile F] [--dry-run] CONFIG.yaml [key=value ...]`

Checks the config and prepares the data in one process (so bad input fails before any rank starts), then
runs the `deepspeed` launcher on `python -m pretrain`. Without GPUs, `--num_gpus N` starts N CPU ranks
over gloo. Multi-node: give a hostfile (`host slots=N` lines); the launcher's backends (pdsh, openmpi,
slurm, ...) are chosen with `--launcher`. See README for a 2-node example.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys

from launch.command import LAUNCH_OWNER_ENV, PASSTHROUGH, deepspeed_command, free_port, has_gpus, launch_env
from settings.fields import above, at_least, between, flag


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_gpus", type=flag(int, above(0)), help="ranks on this node (GPUs, or CPU ranks without GPUs)")
    p.add_argument("--num_nodes", type=flag(int, above(0)), help="nodes to use from the hostfile")
    p.add_argument("--hostfile", type=existing_file, help="hostfile with `host slots=N` lines (multi-node)")
    p.add_argument("--include", help="DeepSpeed resource filter, e.g. 'worker-0@worker-1:0,2'")
    p.add_argument("--exclude", help="DeepSpeed resource filter of hosts/slots to leave out")
    p.add_argument("--master_addr", help="rendezvous address (multi-node)")
    p.add_argument("--master_port", type=flag(int, between(1, 65535)), help="rendezvous port")
    p.add_argument("--launcher", help="multi-node backend: pdsh (default), openmpi, mpich, slurm, ...")
    p.add_argument("--launcher_args", help="extra arguments for the multi-node backend")
    p.add_argument("--node_rank", type=flag(int, at_least(0)),
                   help="this node's rank with --no_ssh (torchrun-like start)")
    p.add_argument("--no_ssh", action="store_true", help="start each node by hand (with --node_rank)")
    p.add_argument("--no_ssh_check", action="store_true", help="skip the launcher's passwordless-ssh check")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    p.add_argument("--skip-check", action="store_true", help="do not validate/prepare (nor look for stale "
                   "torch-extension build locks) before launching")
    p.add_argument("config", nargs="?", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    args = p.parse_args(argv)
    if (args.include or args.exclude) and (args.num_gpus or args.num_nodes):
        p.error("--include/--exclude cannot be combined with --num_gpus/--num_nodes (a DeepSpeed rule)")
    if (args.num_nodes or 1) > 1 and not args.hostfile:
        p.error(f"--num_nodes {args.num_nodes} needs --hostfile (`host slots=N` lines naming the nodes)")
    return args


def existing_file(text: str) -> str:
    """An argparse type: a file that exists (a hostfile typo is named here, not by the launcher's traceback)."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gpus = has_gpus()
    options = {name: getattr(args, name) for name in PASSTHROUGH}
    if not gpus and not args.hostfile and not args.num_gpus:
        options["num_gpus"] = 1
    if not args.master_port and not args.hostfile:  # single node: never collide with another job's 29500
        options["master_port"] = free_port()
    cmd = deepspeed_command(options, args.config, args.overrides)
    env = launch_env(options.get("num_gpus") or 1, gpus)
    if args.dry_run:
        prefix = "" if gpus else f"DS_ACCELERATOR={env['DS_ACCELERATOR']} OMP_NUM_THREADS={env['OMP_NUM_THREADS']} "
        print(prefix + shlex.join(cmd))
        return 0
    if not args.skip_check:
        check = [sys.executable, "-m", "pretrain", "--check"] + ([args.config] if args.config else []) + args.overrides
        if args.node_rank:  # another node: the run directory is node 0's rank 0's to lock
            check.append("--not-first-node")
        rc = subprocess.call(check, env=env)
        if rc != 0:
            return rc
    return run_forwarding_preemption(cmd, env)


def run_forwarding_preemption(cmd: list[str], env: dict[str, str]) -> int:
    """Run the launcher; on SIGTERM/SIGUSR1/SIGINT tell the ranks (SIGUSR1) to finish their step, save and exit 0.

    DeepSpeed's own launcher answers SIGTERM by terminating the ranks and SIGKILLs them 30 s later, which would
    lose a longer save. So it runs in a session of its own: a signal to this process's group (Ctrl-C, `kill --
    -PGID`, a scheduler signalling the job's process group) reaches only this process, which passes it to the
    ranks directly; the launcher just sees them end. Being in their own session, the ranks would outlive this
    process when it is killed (SIGKILL, the OOM killer) and hold the run directory: each rank watches it and
    stops, saving, when it is gone (pretrain/faults.py)."""
    env = {**env, LAUNCH_OWNER_ENV: f"{socket.gethostname()}:{os.getpid()}"}  # the ranks stop when this dies
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def forward(signum, frame):
        for rank in training_ranks(proc.pid):
            rank.send_signal(signal.SIGUSR1)

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, forward)
    return proc.wait()


def training_ranks(launcher_pid: int) -> list:
    import psutil

    ranks = []
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if "pretrain" in child.cmdline() and any(a.startswith("--local_rank") for a in child.cmdline()):
                ranks.append(child)
        except psutil.Error:
            continue
    return ranks


if __name__ == "__main__":
    sys.exit(main())
