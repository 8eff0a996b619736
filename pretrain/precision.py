"""`train.precision: auto`: bf16 where the device computes it natively, fp32 elsewhere.

On CPUs without bf16 units (AMD Zen 3, most laptops before 2023) a bf16 matmul is emulated and runs ~90x
slower than fp32, so bf16 as a blanket default turns a one-minute demo into twenty. The choice is made per
device, once, and written into the run's config.yaml as the concrete value, so resumes and compatibility
checks compare bf16 with bf16, never `auto` with whatever `auto` meant on another machine.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import NamedTuple

import torch

from pretrain import cpu
from pretrain.config import Config

log = logging.getLogger("growlm")

CONCRETE = ("bf16", "fp32")


class Choice(NamedTuple):
    precision: str
    """bf16 | fp32: what the run trains in."""
    reason: str
    """Why, in words, for the log."""
    slow: bool
    """bf16 was asked for explicitly on a device that only emulates it."""


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(does the device compute bf16 natively, what was found): the units by torch's own capability queries, and on
    a CPU whether an ISA cap in the environment keeps the kernels off them (pretrain/cpu.py)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} supports bf16"
        return False, f"{name} has no native bf16"
    units, name = cpu.bf16_units(), cpu.cpu_name()
    if not units:
        return False, f"this CPU ({name}) has no native bf16 units (no AMX, no AVX512-BF16)"
    cap = cpu.kernel_cap()
    if cap:
        return False, f"this CPU ({name}) has {' and '.join(units)}, but {cap}: no native bf16 units in use"
    return True, f"this CPU ({name}) has {' and '.join(units)}"


def choose(requested: str, device: torch.device) -> Choice:
    """The concrete precision for `train.precision=requested` on `device`."""
    if requested not in ("auto", *CONCRETE):
        raise ValueError(f"train.precision={requested!r} is not valid; choose one of ['auto', *{list(CONCRETE)}]")
    native, found = native_bf16(device)
    if requested == "auto":
        return Choice("bf16" if native else "fp32", f"auto: {found}", False)
    slow = requested == "bf16" and not native
    return Choice(requested, f"set explicitly; {found}", slow)


def resolve(cfg: Config, device: torch.device) -> tuple[Config, Choice]:
    """The config with `train.precision` concrete (unchanged when it already is), and the choice made."""
    choice = choose(cfg.train.precision, device)
    train = dataclasses.replace(cfg.train, precision=choice.precision)
    return dataclasses.replace(cfg, train=train), choice


def report(choice: Choice, device: torch.device) -> None:
    """Log the choice; warn, with a measured slowdown, when bf16 was forced onto a device that emulates it."""
    log.info("precision: %s (%s)", choice.precision, choice.reason)
    if choice.slow:
        log.warning(
            "train.precision=bf16 on a device without native bf16: a bf16 matmul runs %.0fx slower than fp32 here "
            "(measured now), so training will be several times slower (the tiny demo: ~10x on a 2-core AMD EPYC). "
            "Set train.precision=auto (or fp32) to train in fp32 on this machine.", bf16_slowdown(device))


def bf16_slowdown(device: torch.device, n: int = 256, repeats: int = 3) -> float:
    """fp32 matmul throughput over bf16 on `device`: the price of forcing bf16 (~50 ms on an emulating CPU)."""
    def best(dtype: torch.dtype) -> float:
        a = torch.randn(n, n, device=device, dtype=dtype)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.bfloat16) / best(torch.float32)
