"""experiments.lag: the spec, and the statistics over seeds (against scipy on fixed numbers)."""
from __future__ import annotations

import math

import pytest
from scipy import stats

from experiments.lag import LagExperiment, aggregate_by_step, flops_to_reach, render, scratch_steps, settles_at
from experiments.stats import mean_ci
from growth import GrowthError
from model import ModelConfig


def test_the_shipped_spec_loads_with_distinct_pools():
    spec = LagExperiment.load("configs/experiments/lag_cpu.yaml")
    assert spec.validate_steps >= 10 * spec.lag_steps and len(spec.seeds) >= 3 and spec.carry == [False, True]
    assert len(spec.growths[0].pool.split(",")) >= 6


def test_bad_specs_are_refused_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("config: configs/experiments/growth_lag.yaml\nseeds: [0]\nsource_steps: 10\nlag_steps: 5\n"
                   "validate_steps: 4\ngrowths: {}\nsurprise: 1\n")
    with pytest.raises(GrowthError, match=r"unknown keys \['surprise'\]"):
        LagExperiment.load(bad)
    bad.write_text(bad.read_text().replace("surprise: 1\n", ""))
    with pytest.raises(GrowthError, match="lag_steps < validate_steps"):
        LagExperiment.load(bad)
    spec = LagExperiment.load("configs/experiments/lag_cpu.yaml")
    with pytest.raises(GrowthError, match=r"unknown growth\(s\) \['d9'\]"):
        spec.select(["d9"])
    with pytest.raises(GrowthError, match=r"seed\(s\) \[7\] are not in the spec's seeds"):
        spec.select(seeds=[7])


def test_seed_and_growth_selections_share_one_experiment_folder():
    whole, part = (LagExperiment.load("configs/experiments/lag_cpu.yaml") for _ in range(2))
    part.select(["d2_to_4"], [0])
    assert part.seeds == [0] and [g.name for g in part.growths] == ["d2_to_4"]
    assert part.identity() == whole.identity()
    changed = LagExperiment.load("configs/experiments/lag_cpu.yaml")
    changed.lag_steps += 1
    assert changed.identity() != whole.identity()


def test_mean_ci_is_the_t_interval():
    xs = [0.2, 0.5, 0.9]
    mean, half, n = mean_ci(xs + [math.nan])
    ci = stats.ttest_1samp(xs, 0.0).confidence_interval(0.95)
    assert n == 3 and mean == pytest.approx(sum(xs) / 3) and half == pytest.approx((ci.high - ci.low) / 2)
    assert mean_ci([1.0])[:2] == (1.0, pytest.approx(math.nan, nan_ok=True)) and mean_ci([])[2] == 0


def test_aggregate_by_step_keeps_steps_every_seed_logged():
    seed0 = [{"step": 0, "spearman": 0.2, "kendall": 0.1, "regret": 0.3}, {"step": 5, "spearman": 0.8, "kendall": 0.6,
                                                                             "regret": 0.0}]
    seed1 = [{"step": 0, "spearman": 0.4, "kendall": 0.3, "regret": 0.1}, {"step": 3, "spearman": 1.0, "kendall": 1.0,
                                                                             "regret": 0.0},
             {"step": 5, "spearman": 1.0, "kendall": 1.0, "regret": 0.0}]
    rows = aggregate_by_step([seed0, seed1])
    assert [r["step"] for r in rows] == [0, 5]
    assert rows[0]["spearman"][0] == pytest.approx(0.3) and rows[0]["regret"][2] == 2
    assert rows[0]["regret"][1] == pytest.approx(stats.t.ppf(0.975, 1) * stats.tstd([0.3, 0.1]) / math.sqrt(2))
    text = render({"k": 5, "m": 50, "seeds": [0, 1], "growths": {"g": {"to": ["n_layers=4"], "pool": "stack",
                   "modes": {"fresh": {"by_step": rows, "winners": ["stack"] * 2, "best_at_m": ["stack"] * 2,
                                       "flops_ratio": [0.5, math.nan]}}}}})
    assert "| 5 (k) | 0.900 ± " in text and "reached in 1 of 2 seeds" in text
    assert "from s = 5 on (k = 5)" in text


def test_the_choice_settles_where_the_regret_is_zero_for_good():
    def rows(regrets):
        return [{"step": s, "regret": (r, 0.0, 3)} for s, r in regrets.items()]

    assert settles_at(rows({0: 0.02, 10: 0.0, 20: 0.01, 30: 0.0, 40: 0.0, 100: 0.0})) == 30  # 10 was luck
    assert settles_at(rows({0: 0.0, 10: 0.0, 100: 0.0})) == 0  # right from growth on
    assert settles_at(rows({100: 0.0, 0: 0.03, 50: 0.001})) == 100  # order-free; only m itself
    assert settles_at([]) is None


def test_flops_to_reach_counts_the_source_and_the_first_step_at_target():
    curve = {0: 5.0, 10: 4.0, 20: 3.5, 30: 3.6}
    assert flops_to_reach(curve, 3.6, 100.0, 2.0) == 100.0 + 20 * 2.0
    assert math.isnan(flops_to_reach(curve, 3.0, 100.0, 2.0))


def test_scratch_steps_spend_the_sources_and_the_grown_runs_flops():
    small = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=512, max_seq_len=64)
    big = ModelConfig(**{**small.__dict__, "n_layers": 4})
    n = scratch_steps(small, big, 64, 200, 100)
    assert n == round(200 * small.flops_per_token(64) / big.flops_per_token(64)) + 100
    assert 100 + 100 < n < 100 + 200  # a 2-layer step costs more than half a 4-layer one (embeddings, head)
