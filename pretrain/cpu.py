"""What CPU this is, which bf16 units its kernels may use, and how one machine computes like another.

torch picks its vectorized kernels by ATen's CPU capability (`ATEN_CPU_CAPABILITY` caps it) and oneDNN, behind
bf16 matmuls, by its own ISA detection (`ONEDNN_MAX_CPU_ISA` caps it). Capped together they make one machine
round like an older CPU: the numerics test matrix (scripts/isa_matrix.py, docs/guide.md "Tests") runs the suite
under each cap, and `train.precision: auto` reads the caps, so a capped run trains in what that CPU would.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class IsaCap:
    name: str
    """ATen's capability, as `ATEN_CPU_CAPABILITY` spells it."""
    onednn: str
    """The matching `ONEDNN_MAX_CPU_ISA`."""
    computes_like: str
    """Which CPUs run these kernels natively, for reports."""

    def env(self) -> dict[str, str]:
        return {"ATEN_CPU_CAPABILITY": self.name, "ONEDNN_MAX_CPU_ISA": self.onednn}


ISA_CAPS = (
    IsaCap("default", "SSE41", "a CPU without AVX (scalar ATen kernels, SSE4.1 oneDNN)"),
    IsaCap("avx2", "AVX2", "AMD Zen 2/3, Intel before Skylake-SP: AVX2, no AVX-512, no native bf16"),
    IsaCap("avx512", "AVX512_CORE_BF16", "AMD Zen 4: AVX-512 with AVX512-BF16, no AMX"),
)
"""From the oldest kernels up; `native` (no cap) is the machine itself."""

_ATEN_ORDER = ("DEFAULT", "AVX2", "AVX512")
_ONEDNN_BF16 = ("AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16",
                "AVX10_1_512_AMX_FP16", "ALL")
"""oneDNN ISAs (its documented `ONEDNN_MAX_CPU_ISA` values) whose kernels include native bf16 instructions."""


def cpu_name() -> str:
    """The CPU's model name, for logs and benchmark reports (read from /proc/cpuinfo; starts no process)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_units() -> list[str]:
    """The native bf16 units the hardware has (whatever the caps), by torch's own capability queries."""
    return [unit for unit, present in (("AMX", torch.cpu._is_amx_tile_supported()),
                                       ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported())) if present]


def kernel_cap() -> str | None:
    """Why the kernels may not use the CPU's bf16 units although it has them (an ISA cap in the environment), or
    None when nothing caps them."""
    aten = torch.backends.cpu.get_cpu_capability()
    if aten in _ATEN_ORDER[:2]:
        return f"ATen's kernels are capped at {aten} (ATEN_CPU_CAPABILITY)"
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if onednn and onednn not in _ONEDNN_BF16:
        return f"oneDNN's kernels are capped at {onednn} (ONEDNN_MAX_CPU_ISA)"
    return None


def runnable_caps() -> list[IsaCap]:
    """The caps this machine can run: those at or below what its flags support (ATen accepts a cap above the
    CPU, then executes instructions it lacks). Not x86 (SVE, VSX builds): the scalar kernels only."""
    flags = torch.cpu.get_capabilities()
    if flags.get("architecture") != "x86_64":
        return [ISA_CAPS[0]]
    avx512 = all(flags.get(f) for f in ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"))
    return list(ISA_CAPS[:3 if avx512 else 2 if flags.get("avx2") and flags.get("fma3") else 1])
