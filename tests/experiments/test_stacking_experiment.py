"""experiments.stacking: the spec, the FLOPs accounting against hand sums, the claims against scipy/statsmodels on
fixed numbers, and (slow) the whole experiment on a tiny spec."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from experiments.__main__ import main as experiments_main
from experiments.__main__ import spec_kind
from experiments.stacking import StackingExperiment, claims, flops_at, render, seed_record
from growth import GrowthError
from model import ModelConfig

SPEC = "configs/experiments/stacking_horizon.yaml"
STAGES = [{"at_step": 0, "winner": None},
          {"at_step": 10, "depth": 3, "winner": "stack_top", "lag_overhead_steps": 4},
          {"at_step": 20, "depth": 4, "winner": "stack", "lag_overhead_steps": 0}]


def per_layer(depth: int) -> float:
    return float(depth)


def test_the_shipped_spec_meets_issue_34s_floor():
    spec = StackingExperiment.load(SPEC)
    assert spec_kind(SPEC) == "stacking" and len(spec.seeds) >= 3 and spec.carry
    assert spec.fixed_pool == "stack_top" and len(spec.adaptive_pool.split(",")) >= 3
    assert spec.stages[-1].at_step < spec.steps and spec.margin == 0.02


@pytest.mark.parametrize("change, message", [
    ({"fixed_pool": ["stack", "stack_top"]}, "fixed_pool='stack,stack_top' must name exactly one operator"),
    ({"adaptive_pool": ["stack"]}, "adaptive_pool='stack' gives LAG nothing to choose between"),
    ({"seeds": [0]}, r"seeds=\[0\] must be at least two distinct seeds"),
    ({"margin": 0}, "margin=0 must be > 0"),
    ({"alpha": 0.7}, r"alpha=0.7 must be in \(0, 0.5\)"),
    ({"steps": "many"}, "steps='many' must be an integer"),  # was a traceback from int()
    ({"seeds": [0, "one"]}, r"seeds\[1\]='one' must be an integer"),
    ({"surprise": 1}, r"unknown keys \['surprise'\]"),
    ({"stages": [{"at_step": 1990, "depth": 3}]}, "lasts 10 steps, not more than the lag of 25"),
    ({"stages": [3]}, "must be a list of {at_step, depth} integers"),
])
def test_bad_specs_are_refused_naming_the_key(tmp_path, change, message):
    raw = yaml.safe_load(open(SPEC)) | change
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(GrowthError, match=message):
        StackingExperiment.load(path)


def test_a_spec_that_is_not_a_mapping_or_not_yaml_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(GrowthError, match=f"{path}: an experiment spec is a mapping with keys"):
        StackingExperiment.load(path)
    path.write_text("seeds: [0, 1\n")
    with pytest.raises(GrowthError, match="spec.yaml"):
        StackingExperiment.load(path)


def test_flops_count_each_stage_at_its_depth_and_the_losers_lag_from_the_stage_start():
    assert flops_at(STAGES, 2, per_layer, 5) == 5 * 2
    assert flops_at(STAGES, 2, per_layer, 10) == 10 * 2 + 4 * 3  # growth: the losing candidates' lag is spent
    assert flops_at(STAGES, 2, per_layer, 25) == 10 * 2 + (10 + 4) * 3 + 5 * 4


def test_seed_record_compares_each_arm_with_scratch():
    scratch_curve = {0: 6.0, 10: 5.0, 20: 4.0, 30: 3.0}
    arm = {"stages": STAGES, "curve": {"0": 6.0, "30": 4.5}}
    record = seed_record({"adaptive": arm, "fixed": arm | {"curve": {"30": 2.0}}}, scratch_curve, 30, 2, 4,
                         per_layer)
    spent = 10 * 2 + (10 + 4) * 3 + 10 * 4  # 102, against scratch's 30 * 4
    assert record["scratch"] == {"loss": 3.0, "flops": 1.0}
    assert record["adaptive"]["flops"] == pytest.approx(spent / 120)
    assert record["adaptive"]["scratch_to_reach"] == pytest.approx(20 * 4 / spent)  # scratch first <= 4.5 at 20
    assert math.isnan(record["fixed"]["scratch_to_reach"])  # scratch never got to 2.0
    assert record["adaptive"]["picks"] == ["stack_top", "stack"]


def test_claims_are_scipys_paired_t_and_statsmodels_tost_with_holm_per_family():
    adaptive, fixed, scratch = [3.10, 3.05, 3.12, 3.08], [3.15, 3.09, 3.16, 3.10], [3.11, 3.04, 3.10, 3.09]
    records = [{"adaptive": {"loss": a}, "fixed": {"loss": f}, "scratch": {"loss": s}}
               for a, f, s in zip(adaptive, fixed, scratch)]
    out = claims(records, margin=0.02, alpha=0.05)
    lower, eq_adaptive, eq_fixed = out
    assert lower["test"].p == pytest.approx(stats.ttest_rel(adaptive, fixed, alternative="less").pvalue)
    assert lower["holm_p"] == pytest.approx(lower["test"].p)  # a family of one
    ps = [ttost_paired(np.array(arm), np.array(scratch), -0.02, 0.02)[0] for arm in (adaptive, fixed)]
    assert [eq_adaptive["test"].p, eq_fixed["test"].p] == pytest.approx(ps)
    assert [eq_adaptive["holm_p"], eq_fixed["holm_p"]] == pytest.approx(list(multipletests(ps, method="holm")[1]))
    assert lower["holds"] == (lower["holm_p"] < 0.05) and eq_fixed["holds"] is False  # fixed is ~0.04 above


def test_the_report_states_each_claims_verdict_and_every_seeds_losses_and_picks():
    records = []
    for seed, (a, f, sc) in enumerate([(4.5, 4.6, 4.52), (4.4, 4.55, 4.41), (4.45, 4.62, 4.47)]):
        arm = {"stages": STAGES, "curve": {"30": a}}
        records.append(seed_record({"adaptive": arm, "fixed": arm | {"curve": {"30": f}}},
                                   {0: 6.0, 30: sc}, 30, 2, 4, per_layer) | {"seed": seed})
    out = claims(records, margin=0.02, alpha=0.05)
    text = render({"seeds": records, "claims": out, "margin": 0.02, "alpha": 0.05, "steps": 30,
                   "stages": [{"at_step": 10, "depth": 3}, {"at_step": 20, "depth": 4}], "start_depth": 2,
                   "lag_steps": 4, "adaptive_pool": "stack_top,stack", "fixed_pool": "stack_top"})
    verdict = "supported" if out[0]["holds"] else "not shown"
    assert f"| adaptive final val loss < fixed's | {4.45 - 4.59:+.4f} |" in text and f"**{verdict}** |" in text
    assert "| 1 | 4.4000 | 4.5500 | 4.4100 | stack_top, stack |" in text
    assert "| fixed | 4.5900 ± " in text and "(reached in 3/3)" in text  # scratch got below fixed's every time
    assert f"> {120 / 102:.2f} (scratch never reached it: 0/3)" in text  # ... and never to adaptive's


@pytest.mark.slow
@pytest.mark.process
def test_the_experiment_runs_every_arm_and_a_rerun_trains_nothing(tmp_path, capsys):
    """Two seeds of a 2 -> 3 -> 4-layer stacking, 60 steps: the report's arms, picks from the pool, and the fixed
    arm's FLOPs equal to the stage sums of its depths (no LAG overhead with one candidate)."""
    raw = yaml.safe_load(open(SPEC)) | {
        "seeds": [0, 1], "stages": [{"at_step": 20, "depth": 3}, {"at_step": 40, "depth": 4}], "steps": 60,
        "lag_steps": 3, "overrides": {"train.decay_steps": 10, "eval.every": 10, "eval.batches": 2}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert experiments_main([str(spec), "--out", str(out)]) == 0
    result = json.loads((out / "stacking.json").read_text())
    assert [r["seed"] for r in result["seeds"]] == [0, 1]
    pool = {"stack_top", "stack_middle-block1", "stack"}
    assert all(set(r["adaptive"]["picks"]) <= pool and len(r["adaptive"]["picks"]) == 2 for r in result["seeds"])
    model = ModelConfig(**yaml.safe_load(open(raw["config"]))["model"])
    f = {d: dataclasses.replace(model, n_layers=d).flops_per_token(64) for d in (2, 3, 4)}
    expected = (20 * f[2] + 20 * f[3] + 20 * f[4]) / (60 * f[4])
    assert result["seeds"][0]["fixed"]["flops"] == pytest.approx(expected)
    assert result["seeds"][0]["adaptive"]["flops"] > expected  # the losers' lag steps
    assert (out / "stacking.png").is_file() and "| 1 |" in (out / "stacking.md").read_text()
    capsys.readouterr()
    assert experiments_main([str(spec), "--out", str(out)]) == 0
    assert "steps 0.." not in capsys.readouterr().out  # every run already finished: nothing trained again
