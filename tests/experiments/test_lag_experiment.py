"""experiments.lag and experiments.lag_stats: the spec, and the statistics over seeds (against scipy on fixed
numbers and hand-built tables with known answers)."""
from __future__ import annotations

import math

import pytest
from scipy import stats

from experiments.lag import LagExperiment, plot_by_step, render, scratch_steps
from experiments.lag_stats import flops_to_reach, horizon_table, lag_flops, s_star, seed_result, spearman_gain
from experiments.spec import ROOT
from experiments.stats import mean_ci
from growth import GrowthError
from experiments.lag_choice import spearman
from model import ModelConfig


def test_the_shipped_specs_load_with_distinct_pools():
    spec = LagExperiment.load("configs/experiments/lag_cpu.yaml")
    assert spec.validate_steps >= 10 * spec.lag_steps and len(spec.seeds) >= 3 and spec.carry == [False, True]
    assert len(spec.growths[0].pool.split(",")) >= 6
    horizon = LagExperiment.load("configs/experiments/lag_horizon.yaml")  # issue 34's floor
    assert horizon.choosing_steps == [0, 10, 25, 50, 100, 200, 400] and horizon.validate_steps >= 2000
    assert len(horizon.seeds) >= 5 and horizon.carry == [False, True] and horizon.ranks == 1
    assert [len(set(g.pool.split(","))) >= 6 for g in horizon.growths] == [True, True]


def test_bad_specs_are_refused_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("config: configs/experiments/growth_lag.yaml\nseeds: [0]\nsource_steps: 10\n"
                   "choosing_steps: [0, 5]\nvalidate_steps: 4\ngrowths: {}\nsurprise: 1\n")
    with pytest.raises(GrowthError, match=r"unknown keys \['surprise'\]"):
        LagExperiment.load(bad)
    bad.write_text(bad.read_text().replace("surprise: 1\n", ""))
    with pytest.raises(GrowthError, match=r"choosing_steps=\[0, 5\] .* below validate_steps=4"):
        LagExperiment.load(bad)
    for steps in ("[5, 10]", "[0, 10, 5]", "[0]"):  # no baseline, not increasing, nothing but the baseline
        bad.write_text(bad.read_text().replace("validate_steps: 4", "validate_steps: 40").split("choosing_steps")[0]
                       + f"choosing_steps: {steps}\nvalidate_steps: 40\ngrowths: {{}}\n")
        with pytest.raises(GrowthError, match=r"choosing_steps=.* must be increasing, distinct, start at 0"):
            LagExperiment.load(bad)
    bad.write_text(bad.read_text().replace("choosing_steps: [0]", "choosing_steps: 10"))
    with pytest.raises(GrowthError, match="choosing_steps=10 must be a list"):
        LagExperiment.load(bad)
    bad.write_text(bad.read_text().replace("choosing_steps: 10\n", ""))
    with pytest.raises(GrowthError, match=r"missing keys \['choosing_steps'\]"):
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
    changed.choosing_steps = [0, 20]
    assert changed.identity() != whole.identity()


def test_mean_ci_is_the_t_interval():
    xs = [0.2, 0.5, 0.9]
    mean, half, n = mean_ci(xs + [math.nan])
    ci = stats.ttest_1samp(xs, 0.0).confidence_interval(0.95)
    assert n == 3 and mean == pytest.approx(sum(xs) / 3) and half == pytest.approx((ci.high - ci.low) / 2)
    assert mean_ci([1.0])[:2] == (1.0, pytest.approx(math.nan, nan_ok=True)) and mean_ci([])[2] == 0


def seed(spearman_by_k, picks, best, regrets=None, flops=None):
    ks = list(spearman_by_k)
    return {"spearman": spearman_by_k, "pick": dict(zip(ks, picks)), "best": best,
            "regret": dict(zip(ks, regrets or [0.0] * len(ks))), "flops_pick": dict(zip(ks, flops or [1.0] * len(ks))),
            "flops_best": 0.5, "gap_pick": {k: 0.01 for k in ks}, "gap_best": -0.02}


def test_spearman_gain_is_the_paired_difference_of_scipys_rank_correlations():
    at_m = [[3.1, 3.0, 3.3, 3.2], [2.9, 3.2, 3.0, 3.1], [3.0, 3.1, 3.3, 2.95]]
    at_0 = [[4.0, 4.1, 3.9, 4.2], [4.1, 4.0, 3.8, 4.3], [3.9, 4.2, 4.0, 4.1]]
    at_k = [[3.6, 3.5, 3.8, 3.9], [3.4, 3.7, 3.6, 3.5], [3.5, 3.6, 3.9, 3.45]]
    per_seed = [seed({0: spearman(z, m), 10: spearman(k, m)}, ["a", "a"], "a") for z, k, m in zip(at_0, at_k, at_m)]
    diffs = [stats.spearmanr(k, m).statistic - stats.spearmanr(z, m).statistic for z, k, m in zip(at_0, at_k, at_m)]
    ci = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    gain = spearman_gain(per_seed, 10)
    assert gain["diff"] == pytest.approx(sum(diffs) / 3)
    assert (gain["low"], gain["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert gain["p"] == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue)
    assert spearman_gain(per_seed[:1], 10) is None  # one seed: no interval


def test_regret_hits_and_s_star_on_a_table_with_a_known_answer():
    ks = [0, 10, 25, 50, 100]
    # five seeds; the best at m is "b". Picks per k: at 25 four of five seeds already pick b, at 50 three do (a
    # dip), from 100 on all five: s* is 100, not 25, because 50 falls below 80%.
    picks = [["a", "a", "b", "b", "b"], ["a", "b", "b", "a", "b"], ["a", "a", "b", "b", "b"],
             ["c", "a", "a", "a", "b"], ["a", "a", "b", "b", "b"]]
    regret = {"a": 0.2, "c": 0.4, "b": 0.0}
    per_seed = [seed({k: 0.5 for k in ks}, p, "b", [regret[x] for x in p]) for p in picks]
    table = horizon_table(per_seed, ks)
    rows = {r["k"]: r for r in table["rows"]}
    assert [rows[k]["hits"] for k in ks] == [0.0, 0.2, 0.8, 0.6, 1.0]
    assert rows[0]["regret"][0] == pytest.approx((0.2 * 4 + 0.4) / 5)
    assert rows[25]["regret"] == pytest.approx(mean_ci([0.0, 0.0, 0.0, 0.2, 0.0]))
    assert table["s_star"] == 100 and rows[0]["spearman_gain"] is None
    assert s_star({0: 0.8, 10: 0.9, 25: 1.0}) == 0  # right from growth on
    assert s_star({0: 1.0, 10: 0.6}) is None  # not even at the last choosing step
    assert s_star({10: 0.8, 0: 0.2}) == 10  # order-free


def test_flops_to_reach_counts_the_source_and_the_first_step_at_target():
    curve = {0: 5.0, 10: 4.0, 20: 3.5, 30: 3.6}
    assert flops_to_reach(curve, 3.6, 100.0, 2.0) == 100.0 + 20 * 2.0
    assert math.isnan(flops_to_reach(curve, 3.0, 100.0, 2.0))


def test_lags_own_pick_pays_for_the_source_the_other_candidates_lag_and_its_own_steps():
    # three candidates, k = 10: LAG picks "good" (lowest at 10), which reaches the target 3.0 at step 400;
    # cost = source 1000 + 2 others x 10 steps x 2 + 400 x 2 = 1840, over scratch's 2000 = 0.92. The hindsight best
    # ("late", lowest at m but not at k) reaches it at 200: (1000 + 400) / 2000 = 0.7, with no choosing cost.
    curves = {"good": {0: 5.0, 10: 4.0, 400: 3.0, 2000: 2.9}, "late": {0: 5.0, 10: 4.5, 400: 2.95, 2000: 2.8},
              "bad": {0: 4.9, 10: 4.6, 400: 3.5, 2000: 3.4}}
    curves["late"][200] = 2.99
    assert lag_flops(curves["good"], 3.0, 1000.0, 2.0, 10, 3) == 1840.0
    summary = {"best_at_m": "late", "m": 2000, "candidates": [{"name": n, "curve": {str(s): v for s, v in c.items()}}
                                                   for n, c in curves.items()],
               "by_step": [{"step": 0, "spearman": -0.5, "choice": "bad", "regret": 0.6},
                           {"step": 10, "spearman": 0.5, "choice": "good", "regret": 0.1}]}
    result = seed_result(summary, [0, 10], 3.0, 1000.0, 2.0, 2000.0)
    assert result["flops_pick"][10] == pytest.approx(0.92) and result["flops_best"] == pytest.approx(0.7)
    assert math.isnan(result["flops_pick"][0])  # "bad", picked at growth, never reaches 3.0
    assert result["pick"] == {0: "bad", 10: "good"} and result["spearman"][10] == 0.5
    assert result["gap_pick"] == {0: pytest.approx(0.4), 10: pytest.approx(-0.1)}
    assert result["gap_best"] == pytest.approx(-0.2)
    with pytest.raises(ValueError, match=r"choosing steps \[25\] were not validated"):
        seed_result(summary, [0, 10, 25], 3.0, 1000.0, 2.0, 2000.0)


def test_the_report_tables_every_choosing_step(tmp_path):
    ks = [0, 10, 25]
    per_seed = [seed({0: 0.1, 10: 0.5, 25: 0.9}, ["a", "b", "b"], "b", [0.2, 0.0, 0.0], [math.nan, 0.8, 0.9]),
                seed({0: 0.3, 10: 0.4, 25: 0.7}, ["a", "a", "b"], "b", [0.1, 0.1, 0.0], [1.2, 1.1, 0.95])]
    table = horizon_table(per_seed, ks)
    text = render({"k": ks, "m": 2000, "seeds": [0, 1], "hit_share": 0.8, "growths": {"g": {
        "to": ["n_layers=4"], "pool": "a,b", "modes": {"fresh": {"table": table, "seeds": per_seed}}}}})
    assert "| 0 | — | 0.200 ± " in text and "| 25 | +0.600 [" in text and "(1/2) |" in text
    assert "(1/2) | 0.0100 ± 0.0000 |" in text and "Δloss vs scratch -0.0200" in text
    assert "- s* = 25" in text and "best at m: ['b', 'b']" in text
    results = {"k": ks, "m": 2000, "growths": {"g": {"modes": {"fresh": {"table": horizon_table(per_seed[:1], ks)}}}}}
    plot_by_step(tmp_path / "p.png", results)  # one seed: no interval anywhere, still a plot
    assert (tmp_path / "p.png").stat().st_size > 5_000




def test_scratch_steps_spend_the_sources_and_the_grown_runs_flops():
    small = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=512, max_seq_len=64)
    big = ModelConfig(**{**small.__dict__, "n_layers": 4})
    n = scratch_steps(small, big, 64, 200, 100)
    assert n == round(200 * small.flops_per_token(64) / big.flops_per_token(64)) + 100
    assert 100 + 100 < n < 100 + 200  # a 2-layer step costs more than half a 4-layer one (embeddings, head)


def test_a_spec_run_from_another_directory_names_the_working_directory_and_the_fix(tmp_path, monkeypatch):
    """Issue 51: a LAG spec's relative `config` read from elsewhere said only "does not exist"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GrowthError, match=r"does not exist under the working directory .*: run from the repository "
                                          r"root \(.*\), or give the config's absolute path"):
        LagExperiment.load(ROOT / "configs" / "experiments" / "lag_cpu.yaml")
