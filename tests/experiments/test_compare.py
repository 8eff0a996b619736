"""compare_runs: grouping runs into arms and aggregating over seeds, on hand-made run directories."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from scipy import stats

from experiments import compare
from experiments import runs as cr
from experiments import stats as xstats
from experiments.errors import ExperimentError

JREG = [{"name": "jreg", "weight": 0.1, "variant": "final"}]


def make_run(root: Path, name: str, seed: int, records: list[dict], regs: list | None = None, lr: float = 3e-3) -> Path:
    """A run directory as the trainer writes it: config.yaml + metrics.jsonl."""
    run = root / name
    run.mkdir(parents=True)
    config = {"run": {"name": name, "seed": seed, "out_dir": str(root)}, "train": {"steps": 20, "lr": lr},
              "data": {"cache_dir": f"/cache/{name}"}, "regularizers": regs or []}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def records(val: float, psi: list[float], zeta: float, loss10: float, loss20: float, **extra: float) -> list[dict]:
    """Two logged steps; the jump profile and val loss only at step 20, the trainer's end-of-run record."""
    final = {"step": 20, "loss": loss20, "val/loss": val, "jump/zeta_L": zeta, **extra}
    final.update({f"jump/psi_{l}": v for l, v in enumerate(psi, start=1)})
    return [{"step": 10, "loss": loss10, "jump/zeta_L": 9.0, "jump/psi_1": 0.9, "jump/psi_2": 0.9,
             "jump/psi_3": 0.9, "jump/psi_4": 0.9}, final]


@pytest.fixture
def two_arms(tmp_path: Path) -> list[Path]:
    return [
        make_run(tmp_path, "base-s0", 0, records(4.0, [0.4, 0.02, 0.04, 0.10], 6.0, 5.0, 4.5)),
        make_run(tmp_path, "base-s1", 1, records(4.2, [0.4, 0.04, 0.02, 0.08], 6.0, 5.2, 4.7)),
        make_run(tmp_path, "jreg-s1", 1, records(3.9, [0.3, 0.10, 0.06, 0.01], 0.0, 5.1, 4.4, **{"eval/hs/acc": 0.5}),
                 JREG),
        make_run(tmp_path, "jreg-s0", 0, records(4.1, [0.3, 0.02, 0.04, 0.03], 0.0, 5.3, 4.6, **{"eval/hs/acc": 0.7}),
                 JREG),
    ]


def test_runs_group_by_config_minus_seed_and_name(two_arms: list[Path]) -> None:
    arms = cr.group_runs(cr.load_run(d) for d in two_arms)
    assert list(arms) == ["baseline", "jreg final w=0.1"]
    assert [r.path.name for r in arms["jreg final w=0.1"]] == ["jreg-s0", "jreg-s1"]  # sorted by seed


def test_checkpoint_jobs_do_not_split_an_arm(tmp_path: Path) -> None:
    """A seed scored by an inline lm_eval job and one scored by hand afterwards trained the same model."""
    runs = [make_run(tmp_path, f"base-s{seed}", seed, records(4.0, [0.1, 0.1], 0.0, 5, 4)) for seed in (0, 1)]
    config = yaml.safe_load((runs[1] / "config.yaml").read_text())
    config["jobs"] = {"lm_eval": {"every": 1, "mode": "inline"}}
    (runs[1] / "config.yaml").write_text(yaml.safe_dump(config))
    arms = cr.group_runs(cr.load_run(d) for d in runs)
    assert list(arms) == ["baseline"] and len(arms["baseline"]) == 2


def test_arms_can_be_named_by_run_experiments_directories(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Same config, different spec arms (e.g. two baselines): the directory names keep them apart."""
    runs = [make_run(tmp_path, name, seed, records(4.0 + seed, [0.1, 0.1], 0.0, 5, 4))
            for name, seed in [("baseline-s0", 0), ("baseline-s1", 1), ("control-s0", 0)]]
    assert cr.arm_names_from_dirs(runs) == ["baseline", "baseline", "control"]
    assert compare.main([*map(str, runs), "--out", str(tmp_path / "cmp"), "--arm-from-dir"]) == 0
    report = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| baseline | 2 (0, 1) |" in report and "| control | 1 (0) |" in report
    capsys.readouterr()
    odd = make_run(tmp_path, "odd", 0, records(4.0, [0.1, 0.1], 0.0, 5, 4))
    assert compare.main([str(odd), "--out", str(tmp_path / "cmp2"), "--arm-from-dir"]) == 2
    assert "odd is not named <arm>-s<seed>" in capsys.readouterr().err


def test_arms_with_equal_regularizers_are_told_apart_by_the_differing_key(tmp_path: Path) -> None:
    runs = [cr.load_run(make_run(tmp_path, f"r{lr}", 0, records(4.0, [0.1, 0.1], 0.0, 5, 4), lr=lr))
            for lr in (1e-3, 3e-3)]
    assert list(cr.group_runs(runs)) == ["baseline, train.lr=0.001", "baseline, train.lr=0.003"]
    assert list(cr.group_runs(runs, label_by=["train.lr"])) == ["train.lr=0.001", "train.lr=0.003"]
    with pytest.raises(ValueError, match="same label"):
        cr.group_runs(runs, label_by=["train.steps"])


def test_describe_regularizers() -> None:
    assert cr.describe_regularizers([]) == "baseline"
    regs = [{"name": "jreg", "weight": 0.1, "variant": "weighted", "depth_weights": "linear"},
            {"name": "z_loss", "weight": 1e-4}]
    assert cr.describe_regularizers(regs) == "jreg weighted w=0.1 depth_weights=linear + z_loss w=0.0001"


def test_summary_means_and_sample_stds_over_seeds(two_arms: list[Path]) -> None:
    summary = cr.summarize(cr.group_runs(cr.load_run(d) for d in two_arms))
    base, jreg = summary["baseline"], summary["jreg final w=0.1"]
    # val loss 4.0, 4.2: mean 4.1, sample std sqrt(2 * 0.1^2 / 1) = 0.1414...
    assert base["val/loss"][0] == pytest.approx(4.1) and base["val/loss"][1] == pytest.approx(math.sqrt(0.02))
    assert base["val/loss"][2] == 2
    assert base["zeta_L"][:2] == pytest.approx((6.0, 0.0))
    # middle Psi = mean(Psi_2, Psi_3): 0.03 and 0.03 for baseline; 0.08 and 0.03 for jreg -> 0.055, std 0.03536
    assert base["middle Psi"][:2] == pytest.approx((0.03, 0.0), abs=1e-12)
    assert jreg["middle Psi"][:2] == pytest.approx((0.055, math.sqrt(2 * 0.025**2)))
    assert jreg["eval/hs/acc"][:2] == pytest.approx((0.6, math.sqrt(0.02)))
    assert "eval/hs/acc" not in base
    assert base["final step"][:2] == (20.0, 0.0)
    # zeta_(L-1) by hand: baseline [.4, .02, .04, .10] -> 100 (0.02 + 0.06) = 8, [.4, .04, .02, .08] -> 100 (0 + 0.06)
    # = 6; jreg [.3, .10, .06, .01] -> 0 (no rise), [.3, .02, .04, .03] -> 100 (0.02 + 0) = 2
    assert base["zeta_(L-1)"][:2] == pytest.approx((7.0, math.sqrt(2.0)))
    assert jreg["zeta_(L-1)"][:2] == pytest.approx((1.0, math.sqrt(2.0)))
    assert base["Psi_L"][0] == pytest.approx(0.09) and jreg["Psi_(L-1)"][0] == pytest.approx(0.05)
    assert math.isnan(cr.top_rise([0.5, 0.6]))  # L = 2: Psi_0 does not exist


def test_final_profile_and_last_value_take_the_last_record_that_has_them() -> None:
    recs = [{"step": 1, "jump/psi_1": 0.5, "jump/psi_2": 0.6, "val/loss": 3.0}, {"step": 2, "loss": 1.0}]
    assert cr.final_profile(recs) == [0.5, 0.6]
    assert cr.last_value(recs, "val/loss") == 3.0
    assert math.isnan(cr.last_value(recs, "jump/zeta_L"))
    assert cr.final_profile([{"step": 1}]) == []
    assert math.isnan(cr.middle_psi([0.5, 0.6]))  # L = 2 has no middle layer


def test_mean_std_skips_missing_values_and_has_no_std_for_one_seed() -> None:
    assert xstats.mean_std([1.0, math.nan, 3.0]) == (2.0, math.sqrt(2.0), 2)
    mean, std, n = xstats.mean_std([5.0])
    assert (mean, n) == (5.0, 1) and math.isnan(std)
    assert cr.fmt((5.0, math.nan, 1)) == "5.0000" and cr.fmt((math.nan, math.nan, 0)) == "n/a"
    half = stats.t.interval(0.95, 1, loc=4.1, scale=0.1414 / math.sqrt(2))[1] - 4.1  # scipy's own t interval
    assert cr.fmt((4.1, 0.1414, 2), 2) == f"4.10 ± {half:.2f}" and half > 1.0  # two seeds: a wide interval


def test_confidence_intervals_and_welch_agree_with_scipy_on_fixed_numbers() -> None:
    a, b = [3.91, 3.95, 3.88, 3.99], [4.10, 4.02, 4.15]
    mean, std, n = xstats.mean_std(a)
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(a))
    assert xstats.ci_halfwidth(std, n) == pytest.approx((high - low) / 2, rel=1e-12)
    d = xstats.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-12) and d.diff == pytest.approx(sum(a) / 4 - sum(b) / 3)
    # the Welch interval by hand: Welch-Satterthwaite degrees of freedom and the t quantile
    va, vb = stats.tvar(a) / len(a), stats.tvar(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (d.low, d.high) == pytest.approx((d.diff - half, d.diff + half), rel=1e-9)
    assert not d.within_noise and d.p < 0.05
    close = xstats.welch([4.0, 4.2, 4.1], [4.05, 4.15, 4.12])
    assert close.within_noise and close.low < 0 < close.high
    assert xstats.welch([1.0], [2.0, 3.0]) is None  # one seed has no interval


def test_signed_jump_is_zeta_before_the_max() -> None:
    rec = {"step": 5, "jump/psi_1": 0.4, "jump/psi_2": 0.05, "jump/psi_3": 0.03}
    assert cr.signed_jump(rec) == pytest.approx(-2.0)  # 100 * (0.03 - 0.05): no jump yet, zeta_L would be 0
    assert cr.curve([rec, {"step": 6, "loss": 1.0}], cr.SIGNED_JUMP) == {5: pytest.approx(-2.0)}
    risen = {"step": 7, "jump/psi_1": 0.4, "jump/psi_2": 0.02, "jump/psi_3": 0.05}  # 100 (0 + 0.03): the rise at L
    assert cr.curve([rec, risen], cr.TOP_RISE) == {5: 0.0, 7: pytest.approx(3.0)}


def test_band_uses_steps_logged_in_every_run(tmp_path: Path) -> None:
    a = cr.Run(tmp_path, {}, [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.0}, {"step": 30, "loss": 0.5}])
    b = cr.Run(tmp_path, {}, [{"step": 10, "loss": 4.0}, {"step": 20, "loss": 3.0}])
    steps, mean, half = cr.band([a, b], "loss")
    expected = stats.t.interval(0.95, 1, loc=3.0, scale=stats.sem([2.0, 4.0]))[1] - 3.0
    assert steps == [10, 20] and mean == [3.0, 2.0] and half == pytest.approx([expected] * 2)


def test_main_writes_tables_and_plots(two_arms: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert compare.main([*map(str, two_arms), "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    half = xstats.ci_halfwidth(math.sqrt(0.02), 2)  # two seeds 0.2 apart
    assert f"| baseline | 2 (0, 1) | 20 ± 0 | 4.1000 ± {half:.4f} | 6.000 ± 0.000 | 0.0300 ± 0.0000 |" in md
    assert "## Downstream" in md and f"| jreg final w=0.1 | 0.6000 ± {half:.4f} |" in md and "| baseline | n/a |" in md
    p = stats.ttest_ind([4.1, 3.9], [4.0, 4.2], equal_var=False).pvalue
    assert "## Against baseline" in md and "| jreg final w=0.1 | -0.1000 [" in md and f"p={p:.3g}, within noise" in md
    assert all((out / f).stat().st_size > 0 for f in ("loss.png", "zeta.png", "profile.png"))


def test_missing_run_dir_or_metrics_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ExperimentError, match="does not exist"):
        cr.load_run(tmp_path / "nope")
    run = make_run(tmp_path, "r", 0, [])
    (run / "metrics.jsonl").unlink()
    assert compare.main([str(run), "--out", str(tmp_path / "o")]) == 2
    assert str(run / "metrics.jsonl") in capsys.readouterr().err


def test_a_run_with_no_records_is_warned_about(tmp_path, caplog):
    run = tmp_path / "baseline-s0"
    run.mkdir()
    (run / "config.yaml").write_text("run: {seed: 0}\n")
    (run / "metrics.jsonl").write_text("")
    with caplog.at_level("WARNING", logger="growlm"):
        cr.load_run(run)
    assert f"{run / 'metrics.jsonl'} holds no records" in caplog.text


def test_the_final_profile_counts_only_numbered_layers():
    """The monitor also logs jump/psi_L_before_norm: it is not a layer of the profile."""
    record = {"step": 5, "jump/psi_1": 0.1, "jump/psi_2": 0.2, "jump/psi_L_before_norm": 0.05}
    assert cr.final_profile([record]) == [0.1, 0.2]
