"""run_experiment's planning: the launch commands a spec produces, and which finished runs are skipped."""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import yaml

from experiments import arms as rx
from experiments.__main__ import main as run_spec
from pretrain.config import load_config, save_config

SPEC = """
kind: arms
base: configs/tiny.yaml
ranks: 2
seeds: [0, 1]
overrides: {train.steps: 30, monitors.jump.every: 5}
arms:
  baseline: {}
  jreg: {regularizers: [{name: jreg, weight: 0.1, variant: final}]}
"""


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def fake_checkpoint(run_dir: Path, step: int) -> None:
    """A complete checkpoint as pretrain/checkpoint.py leaves it: step dir with manifest, then `latest`."""
    ckpt = run_dir / "checkpoints" / f"step_{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "manifest.json").write_text(json.dumps({"step": step, "files": {}}))
    (run_dir / "checkpoints" / "latest").write_text(f"step_{step}")


def test_plan_is_arm_major_with_one_run_per_seed(spec_file: Path, tmp_path: Path) -> None:
    jobs = rx.plan(rx.load_spec(spec_file), tmp_path / "exp")
    assert [j.name for j in jobs] == ["baseline-s0", "baseline-s1", "jreg-s0", "jreg-s1"]
    assert [j.run_dir for j in jobs] == [tmp_path / "exp" / "runs" / j.name for j in jobs]
    assert all(j.steps == 30 for j in jobs)
    cmd = jobs[3].command(rx.load_spec(spec_file))
    assert cmd[1:5] == ["-m", "launch", "--num_gpus", "2"]
    assert cmd[5] == str(rx.ROOT / "configs" / "tiny.yaml")
    # What the launched run will be: the arm's regularizer, its seed and name, the shared overrides.
    cfg = load_config(cmd[5], cmd[6:])
    assert cfg.regularizers == [{"name": "jreg", "weight": 0.1, "variant": "final"}]
    assert (cfg.run.seed, cfg.run.name, cfg.monitors.jump.every) == (1, "jreg-s1", 5)
    assert load_config(cmd[5], jobs[0].overrides).regularizers == []


def test_filters_and_extra_overrides_win(spec_file: Path, tmp_path: Path) -> None:
    jobs = rx.plan(rx.load_spec(spec_file), tmp_path, arms=["jreg"], seeds=[1], extra=("train.steps=12",))
    assert [j.name for j in jobs] == ["jreg-s1"]
    assert jobs[0].steps == 12 and jobs[0].overrides[-1] == "train.steps=12"
    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['nope'\]"):
        rx.plan(rx.load_spec(spec_file), tmp_path, arms=["nope"])
    with pytest.raises(ValueError, match=r"--seeds \[7\] not in the spec's seed plan \[0, 1\]"):
        rx.plan(rx.load_spec(spec_file), tmp_path, seeds=[1, 7])  # a seed added after the fact: refused


def test_dry_run_marks_only_runs_finished_at_the_final_step(spec_file: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "exp"
    fake_checkpoint(out / "runs" / "baseline-s0", 30)
    fake_checkpoint(out / "runs" / "jreg-s0", 20)  # interrupted: resumes, not skipped
    assert run_spec([str(spec_file), "--out", str(out), "--dry-run", "--seeds", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("# complete, skipped: ") and "run.name=baseline-s0" in lines[0]
    assert not lines[1].startswith("#") and "run.name=jreg-s0" in shlex.split(lines[1])


def test_runs_of_a_changed_spec_are_refused_and_runs_as_planned_are_kept(spec_file: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """Issue 51: rerunning after changing an arm skipped the old runs and tested the new question on them."""
    out = tmp_path / "exp"
    for job in rx.plan(rx.load_spec(spec_file), out.resolve()):  # every run done, as the spec planned it
        fake_checkpoint(job.run_dir, 30)
        ran = dataclasses.replace(job.config, train=dataclasses.replace(job.config.train, precision="fp32"),
                                  log=dataclasses.replace(job.config.log, progress=False))
        save_config(ran, job.run_dir / "config.yaml")  # auto resolved, logging changed: still this plan's run
    assert run_spec([str(spec_file), "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("# complete, skipped") == 4
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    spec_file.write_text(SPEC.replace("weight: 0.1", "weight: 0.3"))
    assert run_spec([str(spec_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "jreg-s0 was trained with another config than the spec now plans for arm 'jreg'" in err
    assert "regularizers: ran [{'name': 'jreg', 'weight': 0.1" in err and "'weight': 0.3" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written or run


def test_checked_in_spec_plans_three_arms_by_three_seeds(tmp_path: Path) -> None:
    spec = rx.load_spec(rx.ROOT / "configs" / "experiments" / "jreg_vs_baseline.yaml")
    jobs = rx.plan(spec, tmp_path)
    assert len(jobs) == 9 and {j.steps for j in jobs} == {400}
    variants = {j.name.rsplit("-", 1)[0]: load_config(spec.base, j.overrides).regularizers for j in jobs}
    assert [r[0]["variant"] for r in (variants["jreg_final"], variants["jreg_weighted"])] == ["final", "weighted"]
    assert variants["baseline"] == []


SHIPPED_SPECS = sorted(p for p in (rx.ROOT / "configs" / "experiments").glob("*.yaml")
                       if (yaml.safe_load(p.read_text()) or {}).get("kind") == "arms")


@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=lambda p: p.stem)
def test_every_shipped_spec_plans_valid_configs(path: Path, tmp_path: Path) -> None:
    """plan() validates each arm x seed config, so a key renamed in pretrain/config.py fails here, not hours
    into an experiment."""
    spec = rx.load_spec(path)
    jobs = rx.plan(spec, tmp_path)
    assert len(jobs) == len(spec.arms) * len(spec.seeds)
    assert len({j.run_dir for j in jobs}) == len(jobs)


@pytest.mark.parametrize("text, message", [
    ("base: configs/tiny.yaml\narms: {a: {}}\nseed: [0]\n", "unknown keys \\['seed'\\]"),
    ("base: configs/nope.yaml\narms: {a: {}}\n", "nope.yaml does not exist"),
    ("arms: {}\n", "at least one arm"),
    ("arms: {a: [train.steps=3]}\n", "arms.a must be a mapping"),
])
def test_bad_specs_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        rx.load_spec(path)


def test_jreg_cpu_is_pre_registered(tmp_path: Path) -> None:
    """Equal, fresh seeds and its claims fixed in the spec: what issue 32 asks of the JREG experiment."""
    spec = rx.load_spec(rx.ROOT / "configs" / "experiments" / "jreg_cpu.yaml")
    protocol = spec.protocol
    assert protocol is not None and protocol.baseline == "baseline" and len(set(spec.seeds)) >= 5
    # seeds 0-5 and 10-11 ran this shape before (docs/results.md, jump_sweep.yaml); other specs' seeds likewise
    used = {0, 1, 2, 3, 4, 5, 10, 11}
    used |= {s for p in SHIPPED_SPECS if p.stem != "jreg_cpu" for s in rx.load_spec(p).seeds}
    assert not used & set(spec.seeds)
    claims = {(o.metric, o.predicts, o.margin) for o in protocol.primary}
    assert ("jump/zeta_L", "lower", None) in claims and ("val/loss", None, 0.02) in claims
    (slope,) = protocol.slopes
    assert slope.predicts == "higher" and 0 < slope.window[0] < slope.window[1] <= 1000
    (job,) = rx.plan(spec, tmp_path, arms=list(slope.arms), seeds=spec.seeds[:1])
    assert load_config(spec.base, job.overrides).train.schedule == "constant"
