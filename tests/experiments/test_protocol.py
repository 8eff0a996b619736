"""Pre-registered protocols: the spec's `protocol:` checked, and compare.md's tests of its claims (one- and
two-sided Welch, Holm over each family, TOST, per-seed slopes) against statsmodels, scipy, numpy and hand
computations on fixed numbers; runs outside the seed plan set apart."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_ind, ttost_paired
from test_compare import make_run, records

from experiments import compare
from experiments import stats as xstats
from experiments.errors import ExperimentError
from experiments.runs import window_slope
from experiments.spec import load_spec
from settings.errors import UserError

SPEC = """
seeds: [0, 1, 2]
arms: {baseline: {}, jreg: {}, jreg_rise: {}}
protocol:
  baseline: baseline
  primary:
    jump/zeta_L: {predicts: lower}
    val/loss: {predicts: differs, arms: [jreg]}
"""


def write_spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def table_row(report: str, heading: str, starts: str) -> str:
    """The row of the table under `heading` that starts with `starts` (each table's rows start with the arm)."""
    section = report.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith(starts)]
    assert len(rows) == 1, (starts, section)
    return rows[0]


def test_holm_matches_statsmodels_and_a_hand_computation() -> None:
    # by hand: sorted 0.01, 0.03, 0.04 -> 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, max(0.06, 1 * 0.04) = 0.06
    assert xstats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    family = [0.004, 0.2, 0.012, 0.03, 0.0005, 0.6]
    assert xstats.holm(family) == pytest.approx(list(multipletests(family, method="holm")[1]))
    # a claim without a test keeps its place in the family: by hand 2 * 0.01 = 0.02, then max(0.02, 1 * 1) = 1
    assert xstats.holm([0.01, math.nan]) == pytest.approx([0.02, 1.0])
    assert xstats.holm([]) == []


def test_tost_matches_statsmodels_and_two_one_sided_welch_tests() -> None:
    arm, base, margin = [4.02, 4.05, 3.99, 4.03, 4.01], [4.00, 4.04, 3.98, 4.02, 4.00], 0.05
    d = xstats.tost(arm, base, margin, alpha=0.05)
    assert d.p == pytest.approx(ttost_ind(np.array(arm), np.array(base), -margin, margin, usevar="unequal")[0],
                                rel=1e-12)
    # by hand: H0 diff <= -margin and H0 diff >= +margin, each a one-sided Welch test; TOST's p is the larger
    above = stats.ttest_ind([x + margin for x in arm], base, equal_var=False, alternative="greater").pvalue
    below = stats.ttest_ind([x - margin for x in arm], base, equal_var=False, alternative="less").pvalue
    assert d.p == pytest.approx(max(above, below), rel=1e-9) and d.p < 0.05
    ci = stats.ttest_ind(arm, base, equal_var=False).confidence_interval(0.90)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high)) and -margin < d.low < d.high < margin
    wide = xstats.tost([4.0, 4.3, 3.8], [4.1, 3.9, 4.2], margin, alpha=0.05)  # noisy seeds: not shown equivalent
    assert wide.p > 0.05 and (wide.low < -margin or wide.high > margin)
    assert xstats.tost([4.0], base, margin, 0.05) is None


def test_one_sided_welch_matches_scipy_and_is_open_on_one_side() -> None:
    arm, base = [1.0, 0.5, 2.0], [6.0, 5.0, 7.0]
    lower = xstats.welch(arm, base, alternative="less")
    assert lower.p == pytest.approx(stats.ttest_ind(arm, base, equal_var=False, alternative="less").pvalue)
    assert lower.p == pytest.approx(xstats.welch(arm, base).p / 2)  # the predicted side: half the two-sided p
    assert lower.low == -math.inf and lower.high < 0
    assert xstats.welch(arm, base, alternative="greater").p > 0.99  # the other side predicted: far from shown


def test_slope_is_the_least_squares_slope_over_the_window() -> None:
    recs = [{"step": s, "jump/zeta_L": v} for s, v in
            [(0, 9.0), (100, 1.0), (200, 2.5), (300, 2.9), (400, 4.2), (500, -3.0)]]
    expected = np.polyfit([100, 200, 300, 400], [1.0, 2.5, 2.9, 4.2], 1)[0]  # steps 0 and 500 are outside
    assert window_slope(recs, "jump/zeta_L", (100, 400)) == pytest.approx(expected)
    assert window_slope(recs, "jump/zeta_L", (100, 400), per=1000) == pytest.approx(1000 * expected)
    assert xstats.slope([100, 200, 300], [1.0, math.nan, 3.0]) == pytest.approx(0.01)  # nan dropped: (3 - 1) / 200
    assert math.isnan(window_slope(recs, "jump/zeta_L", (150, 250)))  # one point has no slope


def curve_run(root: Path, arm: str, seed: int, losses: list[float], zeta: float) -> Path:
    """A run logging val loss at steps 0, 10, ..., 50, and the jump at the end."""
    recs = [{"step": 10 * i, "val/loss": v} for i, v in enumerate(losses)]
    recs[-1]["jump/zeta_L"] = zeta
    return make_run(root, f"{arm}-s{seed}", seed, recs)


def test_slopes_are_reported_per_arm_with_their_t_interval(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """
seeds: [0, 1, 2]
arms: {baseline: {}, constant: {}}
protocol:
  baseline: baseline
  primary: {jump/zeta_L: {predicts: higher}}
  slopes: {val/loss: {window: [10, 40], predicts: higher}}
""")
    # steps 0 and 50 lie outside the window: the last values (3.0, 9.0) would change every slope
    curves = {"baseline": [[5.0, 4.6, 4.3, 4.1, 4.0, 3.0], [5.0, 4.7, 4.4, 4.0, 3.9, 3.0],
                           [5.0, 4.5, 4.3, 4.2, 4.0, 3.0]],
              "constant": [[5.0, 4.6, 4.5, 4.4, 4.4, 9.0], [5.0, 4.7, 4.6, 4.4, 4.3, 9.0],
                           [5.0, 4.5, 4.5, 4.3, 4.3, 9.0]]}
    runs = [curve_run(tmp_path / "runs", arm, seed, losses, 1.0 + seed)
            for arm, per_seed in curves.items() for seed, losses in enumerate(per_seed)]
    assert compare.main([*map(str, runs), "--out", str(tmp_path / "cmp"), "--spec", str(spec)]) == 0
    report = (tmp_path / "cmp" / "compare.md").read_text()
    slopes = {arm: [1000 * np.polyfit([10, 20, 30, 40], c[1:5], 1)[0] for c in per_seed]
              for arm, per_seed in curves.items()}
    for arm, values in slopes.items():
        mean = statistics.fmean(values)
        half = stats.t.ppf(0.975, 2) * statistics.stdev(values) / math.sqrt(3)
        row = table_row(report, "### Slopes", f"| slope of val/loss, steps 10-40 (per 1,000 steps) | {arm} |")
        assert row.endswith(f"| 3 | {mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] |"), row
    welch = stats.ttest_ind(slopes["constant"], slopes["baseline"], equal_var=False, alternative="greater")
    diff = statistics.fmean(slopes["constant"]) - statistics.fmean(slopes["baseline"])
    row = table_row(report, "### Directional claims", "| constant | slope of val/loss")
    assert f"| higher | 3, 3 | {diff:+.4f} | [" in row and f"+inf] | {welch.pvalue:.3g} |" in row, row


def jump_runs(root: Path, zetas: dict[str, list[float]], vals: dict[str, list[float]]) -> list[Path]:
    return [make_run(root, f"{arm}-s{seed}", seed, records(vals[arm][seed], [0.4, 0.02, 0.04, 0.1], z, 5.0, 4.5))
            for arm, per_seed in zetas.items() for seed, z in enumerate(per_seed)]


ZETAS = {"baseline": [6.0, 5.0, 7.0], "jreg": [1.0, 0.5, 2.0], "jreg_rise": [5.5, 4.0, 6.5]}
VALS = {"baseline": [4.00, 4.10, 4.05], "jreg": [4.30, 4.45, 4.38], "jreg_rise": [4.0, 4.1, 4.0]}


def test_directional_claims_are_holm_adjusted_over_the_whole_family(tmp_path: Path) -> None:
    runs = jump_runs(tmp_path / "runs", ZETAS, VALS)
    out = tmp_path / "cmp"
    assert compare.main([*map(str, runs), "--out", str(out), "--spec", str(write_spec(tmp_path))]) == 0
    report = (out / "compare.md").read_text()
    family = [("jreg", "jump/zeta_L", ZETAS, "less"), ("jreg_rise", "jump/zeta_L", ZETAS, "less"),
              ("jreg", "val/loss", VALS, "two-sided")]  # the spec's order: outcomes, then arms
    raw = [stats.ttest_ind(values[arm], values["baseline"], equal_var=False, alternative=side).pvalue
           for arm, _, values, side in family]
    adjusted = multipletests(raw, method="holm")[1]
    for (arm, metric, _, _), p, holm_p in zip(family, raw, adjusted):
        row = table_row(report, "### Directional claims", f"| {arm} | {metric} |")
        verdict = "supported" if holm_p < 0.05 else "not shown"
        assert row.endswith(f"| {p:.3g} | {holm_p:.3g} | {verdict} |"), row
    assert adjusted[0] < 0.05 < adjusted[1] and adjusted[0] > raw[0]  # both verdicts, and Holm moved a p-value
    assert "### Equivalence claims" not in report  # none declared


def test_a_claim_on_a_metric_no_run_logged_is_refused_naming_the_closest_keys(tmp_path: Path, capsys) -> None:
    """Issue 51: `val/los` (or the guide's old `train/loss`) read "no test" forever."""
    runs = jump_runs(tmp_path / "runs", ZETAS, VALS)
    out = tmp_path / "cmp"
    spec = write_spec(tmp_path, SPEC.replace("val/loss: {predicts", "val/los: {predicts"))
    assert compare.main([*map(str, runs), "--out", str(out), "--spec", str(spec)]) == 2
    assert "protocol metric 'val/los' is logged by none of the 9 runs (closest logged keys: val/loss" in \
        capsys.readouterr().err
    assert not (out / "compare.md").exists()  # no report that reads "no test"
    derived = write_spec(tmp_path, SPEC.replace("val/loss: {predicts", "zeta_(L-1): {predicts"))
    assert compare.main([*map(str, runs), "--out", str(out), "--spec", str(derived)]) == 0  # derived from Psi


def test_equivalence_claims_read_tost_with_holm(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC.replace("val/loss: {predicts: differs, arms: [jreg]}",
                                             "val/loss: {equivalent_within: 0.1}"))
    vals = {"baseline": [4.00, 4.03, 4.01], "jreg": [4.02, 4.04, 4.02], "jreg_rise": [4.3, 4.0, 4.4]}
    runs = jump_runs(tmp_path / "runs", ZETAS, vals)
    assert compare.main([*map(str, runs), "--out", str(tmp_path / "cmp"), "--spec", str(spec)]) == 0
    report = (tmp_path / "cmp" / "compare.md").read_text()
    raw = [ttost_ind(np.array(vals[arm]), np.array(vals["baseline"]), -0.1, 0.1, usevar="unequal")[0]
           for arm in ("jreg", "jreg_rise")]
    adjusted = multipletests(raw, method="holm")[1]
    assert adjusted[0] < 0.05 < adjusted[1]
    for arm, p, holm_p, verdict in zip(("jreg", "jreg_rise"), raw, adjusted, ("equivalent", "not shown equivalent")):
        row = table_row(report, "### Equivalence claims", f"| {arm} | val/loss | ± 0.1 | 3, 3 |")
        assert row.endswith(f"| {p:.3g} | {holm_p:.3g} | {verdict} |"), row


def test_paired_claims_pair_runs_by_seed_and_match_scipy_and_statsmodels(tmp_path: Path) -> None:
    """Branched arms share each seed's spread: paired by seed, the small differences are equivalent (and lower)
    where Welch's tests, which count that spread as noise, cannot tell. Runs arrive in another seed order and the
    baseline's seed 0 has no partner: pairs are matched by seed, never by position."""
    spec = write_spec(tmp_path, """
seeds: [0, 1, 2, 3]
arms: {baseline: {}, branch: {}}
protocol:
  baseline: baseline
  primary:
    val/loss: {equivalent_within: 0.05, paired: true}
    jump/zeta_L: {predicts: lower, paired: true}
""")
    vals = {"baseline": {0: 3.00, 1: 4.00, 2: 4.20, 3: 4.10}, "branch": {3: 4.12, 1: 4.01, 2: 4.22}}
    zetas = {"baseline": {0: 1.0, 1: 6.0, 2: 8.0, 3: 7.0}, "branch": {3: 6.7, 1: 5.8, 2: 7.6}}
    runs = [make_run(tmp_path / "runs", f"{arm}-s{seed}", seed, records(v, [0.4, 0.02, 0.04, 0.1], zetas[arm][seed],
                                                                         5.0, 4.5))
            for arm, per_seed in vals.items() for seed, v in per_seed.items()]
    assert compare.main([*map(str, runs), "--out", str(tmp_path / "cmp"), "--spec", str(spec)]) == 0
    report = (tmp_path / "cmp" / "compare.md").read_text()
    seeds = [1, 2, 3]
    arm_v, base_v = (np.array([vals[a][s] for s in seeds]) for a in ("branch", "baseline"))
    tost_p = ttost_paired(arm_v, base_v, -0.05, 0.05)[0]
    interval = stats.ttest_rel(arm_v, base_v).confidence_interval(0.90)
    lower = stats.ttest_rel([zetas["branch"][s] for s in seeds], [zetas["baseline"][s] for s in seeds],
                            alternative="less")
    row = table_row(report, "### Equivalence claims", "| branch | val/loss | ± 0.05 (paired) | 3, 3 |")
    assert f"| {(arm_v - base_v).mean():+.4f} | [{interval.low:+.4f}, {interval.high:+.4f}] | {tost_p:.3g} |" in row
    assert row.endswith("| equivalent |") and tost_p < 0.05, row
    welch_tost = ttost_ind(np.array(list(vals["branch"].values())), np.array(list(vals["baseline"].values())), -0.05,
                           0.05, usevar="unequal")[0]
    assert welch_tost > 0.05  # unpaired, the same runs show nothing
    row = table_row(report, "### Directional claims", "| branch | jump/zeta_L | lower (paired) | 3, 3 |")
    assert f"-inf, {lower.confidence_interval(0.95).high:+.4f}] | {lower.pvalue:.3g} |" in row, row
    assert row.endswith("| supported |") and lower.pvalue < 0.05


def test_a_paired_tost_drops_a_pair_with_a_missing_side() -> None:
    d = xstats.tost_paired([4.01, math.nan, 4.12, 4.22], [4.00, 4.20, 4.10, 4.20], 0.05, 0.05)
    expected = ttost_paired(np.array([4.01, 4.12, 4.22]), np.array([4.00, 4.10, 4.20]), -0.05, 0.05)[0]
    assert d is not None and d.p == pytest.approx(expected) and d.diff == pytest.approx(0.05 / 3)
    assert xstats.tost_paired([4.0, math.nan], [4.1, 4.2], 0.05, 0.05) is None


def test_runs_outside_the_seed_plan_are_exploratory_only(tmp_path: Path) -> None:
    runs = jump_runs(tmp_path / "runs", ZETAS, VALS)
    runs.append(make_run(tmp_path / "runs", "jreg-s9", 9, records(4.0, [0.4, 0.02, 0.04, 0.1], 40.0, 5.0, 4.5)))
    runs.append(make_run(tmp_path / "runs", "probe-s0", 0, records(4.0, [0.4, 0.02, 0.04, 0.1], 3.0, 5.0, 4.5)))
    assert compare.main([*map(str, runs), "--out", str(tmp_path / "cmp"), "--spec", str(write_spec(tmp_path))]) == 0
    report = (tmp_path / "cmp" / "compare.md").read_text()
    primary, exploratory = report.split("## Exploratory (off-protocol)")
    # the primary row is the planned seeds' test: seed 9's zeta_L of 40 would have made jreg's mean higher
    p = stats.ttest_ind(ZETAS["jreg"], ZETAS["baseline"], equal_var=False, alternative="less").pvalue
    row = table_row(primary, "### Directional claims", "| jreg | jump/zeta_L |")
    assert f"| 3, 3 | {statistics.fmean(ZETAS['jreg']) - 6.0:+.4f} |" in row and f"| {p:.3g} |" in row, row
    assert "jreg-s9" not in primary and "probe" not in primary and "| jreg | 3 (0, 1, 2) |" in primary
    assert table_row(exploratory, "off-protocol", "| jreg | 9 |").startswith(
        "| jreg | 9 | seed 9 is not in the spec's seeds | 40.0000 | 4.0000 |")
    assert "| probe | 0 | arm 'probe' is not in the spec |" in exploratory


def test_without_a_protocol_the_report_is_unchanged(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC.split("protocol:")[0])
    runs = jump_runs(tmp_path / "runs", ZETAS, VALS)
    runs.append(make_run(tmp_path / "runs", "jreg-s9", 9, records(4.0, [0.4, 0.02, 0.04, 0.1], 40.0, 5.0, 4.5)))
    assert compare.main([*map(str, runs), "--out", str(tmp_path / "cmp"), "--spec", str(spec)]) == 0
    report = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Pre-registered" not in report and "Exploratory" not in report
    assert "| jreg | 4 (0, 1, 2, 9) |" in report and "## Against baseline" in report


@pytest.mark.parametrize("protocol, named", [
    ("{baseline: baseline, primay: {val/loss: {predicts: lower}}}", "unknown keys ['primay']"),
    ("{baseline: control, primary: {val/loss: {predicts: lower}}}", "baseline='control'"),
    ("{baseline: baseline, primary: {val/loss: {predict: lower}}}", "primary.val/loss: unknown keys ['predict']"),
    ("{baseline: baseline, primary: {val/loss: {predicts: smaller}}}", "predicts='smaller' must be one of"),
    ("{baseline: baseline, primary: {val/loss: {predicts: lower, equivalent_within: 0.1}}}", "exactly one of"),
    ("{baseline: baseline, primary: {val/loss: {equivalent_within: -1}}}", "equivalent_within=-1"),
    ("{baseline: baseline, primary: {val/loss: {predicts: lower, arms: [baseline]}}}", "arms=['baseline']"),
    ("{baseline: baseline, primary: {val/loss: {equivalent_within: 0.1, paired: yes please}}}",
     "primary.val/loss.paired='yes please'"),
    ("{baseline: baseline, primary: {}}", "primary must map at least one metric"),
    ("{baseline: baseline, alpha: 0.5, primary: {val/loss: {predicts: lower}}}", "alpha=0.5"),
    ("{baseline: baseline, primary: {val/loss: {predicts: lower}}, slopes: {jump/zeta_L: {window: [400, 100], "
     "predicts: higher}}}", "slopes.jump/zeta_L.window=[400, 100]"),
    ("{baseline: baseline, primary: {val/loss: {predicts: lower}}, slopes: {jump/zeta_L: {window: [0, 100]}}}",
     "slopes.jump/zeta_L.predicts=None"),
])
def test_a_bad_protocol_is_refused_naming_the_key(tmp_path: Path, protocol: str, named: str) -> None:
    path = write_spec(tmp_path, f"seeds: [0, 1]\narms: {{baseline: {{}}, jreg: {{}}}}\nprotocol: {protocol}\n")
    with pytest.raises(ExperimentError) as refused:
        load_spec(path)
    assert isinstance(refused.value, UserError) and named in str(refused.value) and str(path) in str(refused.value)


def test_a_protocol_needs_two_seeds_and_compare_refuses_a_second_baseline(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ExperimentError, match="at least 2 seeds"):
        load_spec(write_spec(tmp_path, SPEC.replace("seeds: [0, 1, 2]", "seeds: [0]")))
    runs = jump_runs(tmp_path / "runs", ZETAS, VALS)
    argv = [*map(str, runs), "--out", str(tmp_path / "cmp"), "--spec", str(write_spec(tmp_path)), "--baseline", "jreg"]
    assert compare.main(argv) == 2
    assert "leave out --label-by and --baseline" in capsys.readouterr().err
