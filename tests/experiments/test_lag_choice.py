"""LAG: the selection rule and its statistics alone, the plans' checks, and one small run through the launcher."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from experiments.__main__ import main
from experiments.lag_choice import (LagError, LagPlan, choose, kendall, parse_pool, ranks, selection_by_step, spearman,
                                    summarize)
from experiments.stacking_run import Stage, StackingPlan, parse_schedule, stage_pool
from growth import GrowthError
from growth.folders import check_operator, parse_params
from launching import launch, metrics

# Step-0 order (preserving < stack < interleave) is the reverse of the step-3 order: LAG must follow step 3.
CURVES = {
    "zero_block": {0: 4.0, 1: 4.2, 2: 4.1, 3: 4.05},
    "stack": {0: 4.6, 1: 4.3, 2: 4.0, 3: 3.90},
    "interleave": {0: 5.0, 1: 4.4, 2: 4.0, 3: 3.80},
}


def test_choice_is_the_argmin_at_k_not_at_growth():
    assert choose(CURVES, 3) == "interleave"
    assert choose(CURVES, 2) == "stack"  # tie at 4.0 with interleave: the earlier in pool order
    summary = summarize(CURVES, 3)
    assert (summary["winner"], summary["winner_by_init"]) == ("interleave", "zero_block")
    assert summary["rank_0"] == {"zero_block": 1, "stack": 2, "interleave": 3}
    assert summary["rank_k"] == {"zero_block": 3, "stack": 2, "interleave": 1}


def test_step_zero_is_never_a_lag():
    with pytest.raises(LagError, match="k >= 1"):
        choose(CURVES, 0)


def test_missing_steps_name_the_candidate_and_its_last_step():
    curves = {**CURVES, "stack_top": {0: 4.5, 1: 4.4}}
    with pytest.raises(LagError, match=r"no validation loss at step 3 for \['stack_top'\].*'stack_top': 1"):
        choose(curves, 3)


def test_a_diverged_candidate_never_wins_and_all_nan_is_an_error():
    assert choose({"a": {3: math.nan}, "b": {3: 9.0}}, 3) == "b"
    with pytest.raises(LagError, match="NaN"):
        choose({"a": {3: math.nan}}, 3)


def test_ranks_share_ties_and_spearman_matches_hand_values():
    assert ranks({"a": 1.0, "b": 2.0, "c": 2.0, "d": math.nan}) == {"a": 1, "b": 2, "c": 2, "d": 4}
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1,2,3,4 and y = 1,2.5,2.5,4 (a tie): rho = 4.5 / sqrt(5 * 4.5)
    assert spearman([1, 2, 3, 4], [1, 5, 5, 9]) == pytest.approx(4.5 / math.sqrt(5 * 4.5))
    assert math.isnan(spearman([1, 2], [2, 1]))


def test_kendall_matches_hand_values_with_ties():
    # 4 points, y tied once: concordant 5, discordant 0, tied in y only 1 -> tau_b = 5 / sqrt(6 * 5)
    assert kendall([1, 2, 3, 4], [1, 5, 5, 9]) == pytest.approx(5 / math.sqrt(6 * 5))
    assert kendall([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall([1, 2, 3], [5, 5, 5]))  # a constant side: undefined, not 0


def test_choosing_at_each_step_is_judged_at_the_horizon():
    curves = {n: {**c, 9: c[3] - 0.5} for n, c in CURVES.items()}  # the step-3 order holds at step 9
    by_step = {r["step"]: r for r in selection_by_step(curves, 9)}
    assert sorted(by_step) == [0, 1, 2, 3, 9]
    # step 0 picks zero_block, the worst at step 9: regret = 3.55 - 3.30; from step 3 on, the right choice
    assert by_step[0]["choice"] == "zero_block" and by_step[0]["regret"] == pytest.approx(0.25)
    assert by_step[0]["spearman"] == pytest.approx(-1.0) and by_step[0]["kendall"] == pytest.approx(-1.0)
    assert by_step[3]["choice"] == "interleave" and by_step[3]["regret"] == 0.0
    assert by_step[3]["kendall"] == pytest.approx(1.0)
    assert by_step[2]["spearman"] == pytest.approx(spearman([4.1, 4.0, 4.0], [3.55, 3.40, 3.30]))


def test_the_report_tables_and_plots_the_choice_at_every_step(tmp_path):
    from experiments.lag_report import write_lag_report

    curves = {n: {**c, 9: c[3] - 0.5} for n, c in CURVES.items()}
    summary = summarize(curves, 3, validate_steps=9) | {
        "source": "src", "source_step": 100, "target": ["n_layers=4"], "config": "cfg.yaml", "overrides": [],
        "candidates": [{"name": n, "function_preserving": n == "zero_block", "curve": {str(k): v for k, v in c.items()}}
                       for n, c in curves.items()]}
    write_lag_report(tmp_path, summary)
    md = (tmp_path / "lag.md").read_text()
    assert "| 0 | -1.000 | -1.000 | zero_block | 0.2500 |" in md and "| 3 | 1.000 | 1.000 | interleave | 0.0000 |" in md
    assert (tmp_path / "lag_by_step.png").stat().st_size > 10_000


def test_validation_sweep_reports_both_correlations():
    curves = {n: {**c, 9: c[3] - 0.5} for n, c in CURVES.items()}  # the step-3 order holds at step 9
    summary = summarize(curves, 3, validate_steps=9)
    assert summary["best_at_m"] == "interleave"
    assert summary["spearman_k_m"] == pytest.approx(1.0) and summary["spearman_0_m"] == pytest.approx(-1.0)


def test_pool_entries_carry_operator_parameters():
    pool = parse_pool("stack, stack_middle:block=1,zero_block:position=interleave:seed=2")
    assert [(c.op, c.params, c.name) for c in pool] == [
        ("stack", {}, "stack"), ("stack_middle", {"block": 1}, "stack_middle-block1"),
        ("zero_block", {"position": "interleave", "seed": 2}, "zero_block-positioninterleave-seed2")]
    with pytest.raises(LagError, match="twice"):
        parse_pool("stack,stack")
    with pytest.raises(GrowthError, match=r"'zero_block' takes no parameter \['positon'\]"):
        parse_pool("stack,zero_block:positon=top")  # at parse time: before any source trains (audit case s12)


@pytest.mark.parametrize("change, message", [
    ({"lag_steps": 0}, "never chooses at step 0"),
    ({"validate_steps": 3}, "--validate-steps=3 must exceed --lag-steps=3"),
    ({"overrides": ["model.n_layers=8"]}, "the model shape comes from --to"),
    ({"config": Path("missing.yaml")}, "missing.yaml does not exist"),
    ({"choosing_steps": [0, 3, 9], "validate_steps": 9}, r"choosing steps \[9\] must lie in \[0, m\)"),
    ({"choosing_steps": [0, 3]}, r"choosing steps \[0, 3\] must lie in \[0, m\) with m = --validate-steps=None"),
])
def test_lag_plan_refuses_bad_requests(tmp_path, change, message):
    config = tmp_path / "run.yaml"
    config.write_text("train: {steps: 10}\n")
    plan = LagPlan(source=tmp_path, target=["n_layers=4"], pool=parse_pool("stack"), lag_steps=3, config=config,
                   out=tmp_path / "lag")
    for key, value in change.items():
        setattr(plan, key, value)
    with pytest.raises(GrowthError, match=message):
        plan.check()


@pytest.mark.parametrize("schedule, message", [
    ("50:3,40:4", "stage 1 at_step=50 must lie after step 0 and before 40"),
    ("40:4,80:4", "stage 2 depth=4 must exceed stage 1's 4"),
    ("40:3,45:4", "stage 1 lasts 5 steps, not more than the lag of 8"),
    ("40:3,100:4", "before 100"),
])
def test_stacking_schedule_is_checked_before_any_run(tmp_path, schedule, message):
    plan = StackingPlan(config=tmp_path / "c.yaml", stages=parse_schedule(schedule), out=tmp_path, steps=100,
                        lag_steps=8)
    with pytest.raises(GrowthError, match=message):
        plan.check()


def test_stacking_schedule_parses_and_the_shipped_plan_is_valid():
    assert parse_schedule("40:3, 80:4") == [Stage(40, 3), Stage(80, 4)]
    with pytest.raises(GrowthError, match="not at_step:depth"):
        parse_schedule("40-3")
    shipped = yaml.safe_load(Path("configs/experiments/gradual_stacking.yaml").read_text())
    StackingPlan(config=Path("configs/experiments/growth_lag.yaml"), out=Path("unused"), steps=shipped["steps"],
                 stages=[Stage(**s) for s in shipped["stages"]], lag_steps=shipped["lag_steps"],
                 pool=",".join(shipped["pool"])).check()


def write_val_curve(run: Path, curve: dict[int, float]) -> Path:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "val/loss": v}) + "\n" for s, v in curve.items()))
    return run


@pytest.mark.parametrize("carry", [False, True])
def test_stitched_curve_is_in_global_steps_whether_or_not_a_stage_carried_its_step(tmp_path, carry):
    """Stage 0 trains steps 0..4; at step 4 a stage grows and trains to 8. A fresh stage's run counts 0..4 from
    growth, a carried one 4..8 (it went on from its source's step): the stitched curve is the same."""
    from experiments.stacking_run import _stitched

    stage0 = write_val_curve(tmp_path / "stage0", {s: 5.0 - 0.1 * s for s in range(5)})
    grown = {s: 4.0 - 0.1 * s for s in range(5)}  # by steps since growth
    run1 = write_val_curve(tmp_path / "stage1", {s + 4: v for s, v in grown.items()} if carry else grown)
    stages = [{"at_step": 0, "step_offset": 0, "run": str(stage0)},
              {"at_step": 4, "step_offset": 0 if carry else 4, "run": str(run1)}]
    curve = _stitched(stages, total=8)
    assert list(curve) == [str(s) for s in range(9)]
    assert [curve[str(s)] for s in range(4)] == [5.0 - 0.1 * s for s in range(4)]
    assert [curve[str(s)] for s in range(4, 9)] == [grown[s - 4] for s in range(4, 9)]  # the grown model from 4 on


# ---- one real LAG experiment: a tiny source, 2 candidates, k = 3, through the launcher ----------------------
K = 3


@pytest.fixture(scope="session")
def lag_experiment(runs_root):
    source = runs_root / "lag_source"
    launch(source, ["train.steps=4", "checkpoint.every=4", "eval.every=4"])
    out = runs_root / "lag"
    args = ["lag", "--from", str(source / "checkpoints"), "--to", "n_layers=4", "--pool", "stack,zero_block",
            "--lag-steps", str(K), "--out", str(out), "log.progress=none"]
    assert main(args) == 0
    return source, out, args


@pytest.mark.distributed
def test_lag_report_lists_every_candidate_and_picks_the_argmin_at_k(lag_experiment):
    source, out, _ = lag_experiment
    curves = {name: {r["step"]: r["val/loss"] for r in metrics(out / "runs" / name) if "val/loss" in r}
              for name in ("stack", "zero_block")}
    assert all(sorted(c) == list(range(K + 1)) for c in curves.values()), curves
    report = json.loads((out / "lag.json").read_text())
    assert report["winner"] == min(curves, key=lambda n: curves[n][K])
    assert (out / "lag.png").stat().st_size > 10_000
    table = (out / "lag.md").read_text()
    for name, curve in curves.items():
        assert f"| {name} |" in table or f"| **{name}** |" in table
        for step in range(K + 1):
            assert f"{curve[step]:.4f}" in table
    # zero_block preserves the function: its step-0 loss is the source's final loss on the same val windows.
    source_final = [r["val/loss"] for r in metrics(source) if r["step"] == 4][0]
    assert curves["zero_block"][0] == pytest.approx(source_final, abs=1e-4)
    assert abs(curves["stack"][0] - source_final) > 1e-3


@pytest.mark.distributed
def test_candidates_share_one_config_and_a_rerun_resumes_without_training(lag_experiment, capsys):
    _, out, args = lag_experiment
    configs = {}
    for name in ("stack", "zero_block"):
        cfg = yaml.safe_load((out / "runs" / name / "config.yaml").read_text())
        assert cfg["train"]["init_from"] == str((out / "grown" / name).resolve())
        cfg["run"].pop("name"), cfg["train"].pop("init_from")
        configs[name] = cfg
    assert configs["stack"] == configs["zero_block"]  # same optimizer, schedule, data, seed
    assert configs["stack"]["data"]["tokenizer"] == str((out / "tokenizer.model").resolve())
    before = (out / "lag.json").read_text()
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    assert json.loads((out / "lag.json").read_text())["winner"] == json.loads(before)["winner"]
    args_changed = [a if a != "n_layers=4" else "n_layers=6" for a in args]
    assert main(args_changed) == 2  # another experiment in the same folder is refused


def test_stage_pool_offers_every_block_size_that_fits():
    assert stage_pool("stack_top,stack_middle:block=all,stack", 4, 8) == \
        "stack_top,stack_middle:block=1,stack_middle:block=2,stack_middle:block=4,stack"
    assert stage_pool("stack_middle:block=all", 2, 5) == "stack_middle:block=1"  # 3 new layers, at most 2 copied
    assert stage_pool("stack_middle:block=2,interleave", 2, 4) == "stack_middle:block=2,interleave"
    for spec in stage_pool("stack_middle:block=all", 6, 12).split(","):
        op, params = spec.split(":")[0], parse_params(spec.split(":")[1:])
        assert check_operator(op, params) is None and 12 - 6 >= params["block"]
