"""train.precision=auto: bf16 only where the device computes it natively, the concrete choice on record."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from launching import launch
from pretrain import cpu, precision
from pretrain.config import load_config

CPU = torch.device("cpu")
pytestmark = pytest.mark.numerics  # precision `auto` reads the CPU and its ISA caps


def fake_cpu(monkeypatch, amx: bool, avx512_bf16: bool = False, aten: str = "AVX512", onednn: str = "") -> None:
    """A CPU with these bf16 units, its kernels capped at ATen capability `aten` and oneDNN ISA `onednn` (none:
    uncapped), whatever cap the test matrix runs this test under."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: aten)
    if onednn:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(False, False, "fp32"), (True, False, "bf16"),
                                                        (False, True, "bf16")])
def test_auto_follows_the_cpu_units(monkeypatch, amx, avx512_bf16, expected):
    fake_cpu(monkeypatch, amx, avx512_bf16)
    choice = precision.choose("auto", CPU)
    assert choice.precision == expected and not choice.slow
    assert ("no native bf16" in choice.reason) == (expected == "fp32")


@pytest.mark.parametrize("aten, onednn, expected", [("AVX2", "", "fp32"), ("DEFAULT", "", "fp32"),
                                                   ("AVX512", "AVX2", "fp32"), ("AVX512", "avx512_core", "fp32"),
                                                   ("AVX512", "AVX512_CORE_AMX", "bf16"), ("AVX512", "ALL", "bf16")])
def test_auto_follows_an_isa_cap_that_emulates_an_older_cpu(monkeypatch, aten, onednn, expected):
    """An AMX machine capped to compute like a CPU without bf16 units (the test matrix does this) trains as that CPU
    would: the units are there, the kernels may not use them."""
    fake_cpu(monkeypatch, amx=True, aten=aten, onednn=onednn)
    choice = precision.choose("auto", CPU)
    assert choice.precision == expected, choice
    assert ("capped" in choice.reason) == (expected == "fp32")


@pytest.mark.parametrize("flags, caps", [({"architecture": "x86_64", "avx2": True, "fma3": True}, ["default", "avx2"]),
                                         ({"architecture": "x86_64", "avx2": True, "fma3": True, "avx512_f": True,
                                           "avx512_bw": True, "avx512_vl": True, "avx512_dq": True},
                                          ["default", "avx2", "avx512"]),
                                         ({"architecture": "x86_64", "avx2": False}, ["default"]),
                                         ({"architecture": "aarch64"}, ["default"])])
def test_the_matrix_runs_only_caps_the_cpu_has(monkeypatch, flags, caps):
    """ATen accepts ATEN_CPU_CAPABILITY=avx512 on a CPU without AVX-512 (and would crash on an instruction)."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert [c.name for c in cpu.runnable_caps()] == caps


def test_explicit_precision_is_kept_and_forced_bf16_is_flagged_slow(monkeypatch):
    fake_cpu(monkeypatch, amx=False)
    assert precision.choose("bf16", CPU)[:1] == ("bf16",) and precision.choose("bf16", CPU).slow
    assert not precision.choose("fp32", CPU).slow
    fake_cpu(monkeypatch, amx=True)
    assert not precision.choose("bf16", CPU).slow


def test_resolve_makes_the_config_concrete(monkeypatch):
    fake_cpu(monkeypatch, amx=False)
    cfg = load_config("configs/tiny.yaml")
    assert cfg.train.precision == "auto"  # the shipped default
    resolved, _ = precision.resolve(cfg, CPU)
    assert resolved.train.precision == "fp32" and resolved.train.lr == cfg.train.lr


@pytest.mark.distributed
@pytest.mark.parametrize("cpu, asked, expected, warned", [("yes", "auto", "bf16", False),
                                                          ("no", "bf16", "bf16", True)])
def test_run_records_the_concrete_precision(runs_root, cpu, asked, expected, warned):
    """A real (single-process) run: config.yaml holds the resolved value, the log says why, and bf16 forced
    onto a CPU without bf16 units warns with the measured slowdown."""
    run = runs_root / f"precision_{cpu}_{asked}"
    proc = launch(run, ["train.steps=1", "eval.every=0", "checkpoint.every=0", f"train.precision={asked}"],
                  ranks=None, fault=f"cpu_bf16:{cpu}")
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.train.precision == expected
    assert f"precision: {expected} (" in proc.stderr
    assert ("has AMX" in proc.stderr) == (cpu == "yes")
    assert ("slower than fp32 here" in proc.stderr) == warned
