"""The few distributed facts the trainer needs, valid with or without an initialized process group."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from launch.command import free_port


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def on_gpu() -> bool:
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"


def device() -> torch.device:
    if on_gpu():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a float tensor (a copy; the input is untouched)."""
    out = values.detach().clone().float()
    if dist.is_initialized():
        dist.all_reduce(out)
        out /= dist.get_world_size()
    return out


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    out = values.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(out)
    return out


def rendezvous_store(timeout: datetime.timedelta, bind: str = "master_addr") -> dist.TCPStore:
    """The job's key-value store at MASTER_ADDR:MASTER_PORT, from the launcher's environment.

    torch's env:// rendezvous makes rank 0 listen on every interface of its node, so anyone who can reach the
    node can read and write the store that wires up the job. With bind="master_addr" rank 0 listens only on
    the address MASTER_ADDR resolves to there (loopback for a single-node job); bind="all" is torch's way."""
    addr, port, world = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"])
    if int(os.environ["RANK"]) != 0 or bind == "all":
        return dist.TCPStore(addr, port, world, int(os.environ["RANK"]) == 0, timeout=timeout)
    import socket

    try:
        listener = socket.create_server((addr, port), backlog=socket.SOMAXCONN)
    except OSError as err:
        raise RuntimeError(
            f"rank 0 cannot listen on MASTER_ADDR={addr} MASTER_PORT={port} ({err}): the address must be one of "
            "this node's and the port free (deepspeed.rendezvous_bind=all listens on every interface)") from None
    return dist.TCPStore(addr, port, world, True, timeout=timeout, master_listen_fd=listener.detach())


def synchronize(dev: torch.device | None = None) -> None:
    """Wait for queued accelerator kernels, so a host clock measures the work and not only its launch."""
    dev = dev or device()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def release_shm_buffers() -> None:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer in /dev/shm (~70 MB per rank and port).

    DeepSpeed's shared-memory comm op creates `/dev/shm/deepspeed_allreduce_buffer_*_<addr>_<port>_<rank>`
    and never unlinks it, so every CPU run on a new port would leave RAM behind (18 GB after a day of runs
    here). Every rank maps all peers' buffers during init, so once all ranks are past init the names can
    go: the mappings stay valid and are freed when the processes exit, even when a rank is killed."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if on_gpu() or not addr or not port:
        return
    from pathlib import Path

    for buf in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{addr}_{port}_{rank()}"):
        buf.unlink(missing_ok=True)


class CollectiveTimeout(RuntimeError):
    """A collective gave up waiting: the message names the ranks that were behind, and where."""


_PROGRESS = "growlm/progress/{}"
_ALIVE = "growlm/alive/{}"
HEARTBEAT_S = 1.0


def report_progress(step: int) -> None:
    """Record in the rendezvous store that this rank starts step `step` (one small write per step), so a rank
    whose collective times out can tell which peer stopped where."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        _store().set(_PROGRESS.format(rank()), str(step))


def start_heartbeat() -> None:
    """A daemon thread that stamps this rank's wall time into the store every HEARTBEAT_S: a stopped or dead
    process stops stamping, a rank merely slow or waiting in a collective does not."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    import threading
    import time

    store, key = _store(), _ALIVE.format(rank())

    def beat() -> None:
        while True:
            try:
                store.set(key, repr(time.time()))
            except Exception:  # the store is gone: the job is ending
                return
            time.sleep(HEARTBEAT_S)

    threading.Thread(target=beat, name="growlm-heartbeat", daemon=True).start()


def set_collective_timeout(timeout_s: float) -> None:
    """Apply the timeout to every process group, including the ones DeepSpeed made with `new_group` (data
    parallel, ZeRO partitions), which torch gives its own 30-minute default instead of the main group's."""
    import datetime

    from torch.distributed import distributed_c10d as c10d

    for group in list(c10d._world.pg_map):
        if not c10d._rank_not_in_group(group):
            c10d._set_pg_timeout(datetime.timedelta(seconds=timeout_s), group)


def looks_like_timeout(err: BaseException) -> bool:
    """gloo's "Timed out waiting ...", NCCL's watchdog timeout, or a peer's connection dropping as it dies."""
    text = str(err)
    return any(s in text for s in ("Timed out", "timed out", "Timeout", "Connection closed by peer"))


def timeout_diagnosis(timeout_s: float) -> str:
    """Which ranks a timed-out collective waited for: those whose heartbeat stopped (stopped, dead, or wedged
    holding the interpreter), else those behind by a step (hung elsewhere)."""
    import datetime
    import time

    store = _store()
    store.set_timeout(datetime.timedelta(seconds=10))  # the store's host may be the rank that is gone

    def read(key: str) -> str | None:
        try:
            return store.get(key).decode() if store.check([key]) else None
        except RuntimeError:
            return None

    now = time.time()
    silent = {r: now - float(t) for r in range(world_size()) if (t := read(_ALIVE.format(r))) is not None
              and now - float(t) > 3 * HEARTBEAT_S}
    steps = {r: int(s) for r in range(world_size()) if (s := read(_PROGRESS.format(r))) is not None}
    ahead = max(steps.values(), default=0)
    if silent:
        who = ", ".join(f"rank {r} (silent for {age:.0f} s, at step {steps.get(r, '?')})" for r, age in silent.items())
    else:
        who = ", ".join(f"rank {r} at step {s}" for r, s in steps.items() if s < ahead) or "no rank found behind"
    return (f"a collective waited more than {timeout_s:g} s (deepspeed.collective_timeout_s) at step {ahead}; "
            f"it waited for {who}: stopped, hung or dead. Check that rank's host and log.")


def _store():
    return dist.distributed_c10d._get_default_store()


def init_distributed(timeout_s: float = 600.0, rendezvous_bind: str = "master_addr") -> None:
    """Join the launcher's process group (gloo on CPU, nccl on GPU); a bare `python -m pretrain` is rank 0 of 1.
    A collective that waits longer than `timeout_s` for a rank fails. The group is made here, on a store bound
    as `rendezvous_bind` says (rendezvous_store), and DeepSpeed adopts it."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if on_gpu():  # before the process group: NCCL binds each rank's communicator to its current device
        torch.cuda.set_device(device())
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        backend, world = "nccl" if on_gpu() else "gloo", int(os.environ["WORLD_SIZE"])
        dist.init_process_group(  # a bound device makes new groups split NCCL comms (world > 1)
            backend, store=rendezvous_store(timeout, rendezvous_bind), rank=int(os.environ["RANK"]),
            world_size=world, timeout=timeout, device_id=device() if on_gpu() and world > 1 else None)
        deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
        barrier()  # every rank has mapped its peers' shared-memory buffers
        release_shm_buffers()
        start_heartbeat()
