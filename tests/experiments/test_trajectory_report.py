"""experiments.trajectory: the MDS tables and the subset-after-t0 gaps of compare.md, on hand-made run directories."""
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
from experiments import trajectory as ct


def make_run(root: Path, name: str, seed: int, records: list[dict], lr: float = 3e-3, mode: str = "all",
             t0: int = 0) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"run": {"name": name, "seed": seed, "out_dir": str(root)},
              "train": {"lr": lr, "trainable": {"mode": mode, "after_step": t0}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def traj(step: int, q: float, k: float, upd: float = 0.5) -> dict:
    return {"step": step, "traj/L0.q/mds": q, "traj/L0.k/mds": k, "traj/L0.q/mds_update": upd,
            "traj/L0.k/mds_update": upd}


def arms_of(paths: list[Path]) -> dict[str, list[cr.Run]]:
    return cr.group_runs([cr.load_run(p) for p in paths], names={p: p.name.split("-")[0] for p in paths})


@pytest.fixture
def grid(tmp_path: Path) -> dict[str, list[cr.Run]]:
    return arms_of([
        make_run(tmp_path, "baseline-s0", 0, [traj(10, 0.9, 0.9), traj(20, 0.80, 0.70)]),
        make_run(tmp_path, "baseline-s1", 1, [traj(10, 0.9, 0.9), traj(20, 0.84, 0.74)]),
        make_run(tmp_path, "momentum-s0", 0, [traj(10, 0.9, 0.9), traj(20, 0.60, 0.75)]),
        make_run(tmp_path, "momentum-s1", 1, [traj(10, 0.9, 0.9), traj(20, 0.62, 0.76, math.nan)]),
    ])


def test_mds_tables_give_each_groups_final_mds_and_the_difference_with_scipys_interval(grid):
    text = "\n".join(ct.mds_lines(grid, "baseline"))
    q_base, q_mom = [0.80, 0.84], [0.60, 0.62]
    mean, half = 0.82, stats.t.ppf(0.975, 1) * stats.tstd(q_base) / math.sqrt(2)
    assert f"| L0.q | {mean:.4f} ± {half:.4f} |" in text
    all_base = [(0.80 + 0.70) / 2, (0.84 + 0.74) / 2]
    assert f"| all groups (mean) | {sum(all_base) / 2:.4f} ± " in text
    welch = stats.ttest_ind(q_mom, q_base, equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert f"{-0.21:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}], p={welch.pvalue:.3g}" in text
    assert "- momentum: lower than baseline in 1 of 2 groups" in text


def test_mean_over_groups_skips_undefined_groups():
    assert ct.mean_over_groups(traj(20, 0.6, 0.8, math.nan), "mds") == pytest.approx(0.7)
    assert math.isnan(ct.mean_over_groups(traj(20, 0.6, 0.8, math.nan), "mds_update"))
    assert math.isnan(ct.mean_over_groups({"step": 3, "val/loss": 1.0}, "mds"))


@pytest.fixture
def sweep(tmp_path: Path) -> dict[str, list[cr.Run]]:
    def losses(at_t0: float, end: float) -> list[dict]:
        return [{"step": 50, "val/loss": at_t0}, {"step": 100, "val/loss": end}]

    return arms_of([
        make_run(tmp_path, "full-s0", 0, losses(5.0, 4.0)),
        make_run(tmp_path, "full-s1", 1, losses(5.2, 4.1)),
        make_run(tmp_path, "norms-s0", 0, losses(5.0, 4.5), mode="norms_only", t0=50),
        make_run(tmp_path, "norms-s1", 1, losses(5.2, 4.4), mode="norms_only", t0=50),
        make_run(tmp_path, "random-s1", 1, losses(5.2, 5.0), mode="random", t0=50),
        make_run(tmp_path, "random-s0", 0, losses(5.0, 4.9), mode="random", t0=50),
        make_run(tmp_path, "otherlr-s0", 0, losses(5.0, 4.9), lr=1e-3, mode="random", t0=50),
    ])


def test_subset_gaps_pair_by_seed_against_the_full_arm_differing_only_in_trainable(sweep):
    rows = {r["label"]: r for r in ct.subset_rows(sweep)}
    assert set(rows) == {"norms", "random"}  # otherlr has no full-training twin
    assert rows["norms"]["full"] == "full" and rows["norms"]["t0"] == 50
    assert rows["norms"]["gaps"] == pytest.approx([0.5, 0.3])
    assert rows["random"]["gaps"] == pytest.approx([0.9, 0.9])  # seed 0 first, though listed second
    assert rows["norms"]["stops"] == pytest.approx([1.0, 1.1])


def test_paired_difference_is_scipys_paired_t_test():
    subset, full = [4.5, 4.4, 4.7], [4.0, 4.1, 4.3]
    d = xstats.paired([s - f for s, f in zip(subset, full)])
    ref = stats.ttest_rel(subset, full)
    ci = ref.confidence_interval(0.95)
    assert d.diff == pytest.approx(0.4) and d.p == pytest.approx(ref.pvalue)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high))
    assert xstats.paired([0.1, math.nan]) is None


def test_compare_writes_the_sections_and_plots(grid, sweep, tmp_path):
    runs = [r for rs in {**grid, **sweep}.values() for r in rs]
    report = compare.compare([r.path for r in runs], tmp_path / "out", names=[r.path.name.split("-")[0] for r in runs])
    text = report.read_text()
    assert "## Trajectory: mean directional similarity (MDS)" in text and "## Subset training after t0" in text
    assert "| norms | norms_only | 50 | 2 |" in text
    assert (tmp_path / "out" / "traj.png").stat().st_size > 0 and (tmp_path / "out" / "subset.png").stat().st_size > 0
