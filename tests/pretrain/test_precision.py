"""train.precision=auto: bf16 only where the device computes it natively, the concrete choice on record."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from launching import launch
from pretrain import precision
from pretrain.config import load_config

CPU = torch.device("cpu")


def fake_cpu(monkeypatch, amx: bool, avx512_bf16: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(False, False, "fp32"), (True, False, "bf16"),
                                                        (False, True, "bf16")])
def test_auto_follows_the_cpu_units(monkeypatch, amx, avx512_bf16, expected):
    fake_cpu(monkeypatch, amx, avx512_bf16)
    choice = precision.choose("auto", CPU)
    assert choice.precision == expected and not choice.slow
    assert ("no native bf16" in choice.reason) == (expected == "fp32")


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
