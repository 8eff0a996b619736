"""The few distributed facts the trainer needs, valid with or without an initialized process group."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


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


def free_port() -> int:
    """A TCP port free on this host now, for a single-process run's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
