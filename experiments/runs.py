"""Runs as an experiment report reads them: a run directory's config and metrics, runs grouped into arms
(equal configs but for the seed and paths), the per-run metrics the reports tabulate (final values, the jump
profile's derived figures, curves and their seed bands), Markdown cells and the plots of compare.md."""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from experiments.errors import ExperimentError
from experiments.stats import Difference, ci_halfwidth, mean_std, slope
from storage import run_files
from storage.io import atomic_save_figure

IGNORED_KEYS = frozenset({"run.name", "run.seed", "run.out_dir", "data.cache_dir"})
"""Config keys that do not make runs different arms: the seed, and where the run and its caches live."""
IGNORED_SECTIONS = ("jobs.",)
"""Config sections that do not make runs different arms: jobs only evaluate saved checkpoints (lm_eval, peeling),
so a seed evaluated inline groups with one evaluated afterwards by hand."""
log = logging.getLogger("growlm")

REG_KEY = "regularizers"
PSI_PREFIX = "jump/psi_"
SIGNED_JUMP = "100 (Psi_L - Psi_(L-1))"
TOP_RISE = "zeta_(L-1)"


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def seed(self) -> Any:
        return self.config.get("run", {}).get("seed")


def load_run(path: Path) -> Run:
    """A run directory's resolved config.yaml and metrics.jsonl; a missing one is named in the error."""
    path = Path(path)
    if not path.is_dir():
        raise ExperimentError(f"run directory {path} does not exist")
    files = {name: path / name for name in (run_files.CONFIG, run_files.METRICS)}
    for f in files.values():
        if not f.is_file():
            raise ExperimentError(f"{f} is missing: is {path} a growlm run directory?")
    config = yaml.safe_load(files[run_files.CONFIG].read_text()) or {}
    records = run_files.read_records(files[run_files.METRICS])
    if not records:
        log.warning("warning: %s holds no records (the run never logged a step): its cells read n/a",
                    files[run_files.METRICS])
    downstream = path / run_files.JOBS / "lm_eval" / run_files.METRICS  # eval/<task>/<metric>, the lm_eval job's
    if downstream.is_file():
        records += run_files.read_records(downstream)
    return Run(path, config, records)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> leaf values; lists (the regularizers) stay whole, as one value."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def arm_config(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config that defines an arm: everything but IGNORED_KEYS and IGNORED_SECTIONS."""
    return {k: v for k, v in flatten(config).items()
            if k not in IGNORED_KEYS and not k.startswith(IGNORED_SECTIONS)}


def describe_regularizers(regs: Optional[list[dict[str, Any]]]) -> str:
    """'baseline' or e.g. 'jreg final w=0.1 + z_loss w=0.0001': name, variant, weight, then other params."""
    if not regs:
        return "baseline"
    parts = []
    for reg in regs:
        rest = {k: v for k, v in reg.items() if k not in ("name", "variant", "weight")}
        words = [reg["name"], *([reg["variant"]] if "variant" in reg else []), f"w={reg.get('weight', 1.0):g}"]
        words += [f"{k}={_short(v)}" for k, v in sorted(rest.items())]
        parts.append(" ".join(words))
    return " + ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def group_runs(runs: Iterable[Run], label_by: Optional[list[str]] = None,
               names: Optional[dict[Path, str]] = None) -> dict[str, list[Run]]:
    """label -> the runs of one arm, in order of first appearance (runs within an arm sorted by seed); `names`
    (run directory -> arm name, as an experiment spec has them) labels and groups instead of the configs."""
    if names is not None:
        named: dict[str, list[Run]] = {}
        for run in runs:
            named.setdefault(names[run.path], []).append(run)
        return {label: sorted(rs, key=lambda r: str(r.seed)) for label, rs in named.items()}
    arms: dict[str, list[Run]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for run in runs:
        cfg = arm_config(run.config)
        key = json.dumps(cfg, sort_keys=True, default=str)
        arms.setdefault(key, []).append(run)
        configs[key] = cfg
    unknown = [k for k in label_by or [] if all(k not in cfg for cfg in configs.values())]
    if unknown:
        raise ExperimentError(f"--label-by {','.join(unknown)}: no run's config has that key (keys are dotted, e.g. "
                              "train.lr, regularizers)")
    labels = {key: _label(cfg, configs, label_by) for key, cfg in configs.items()}
    if len(set(labels.values())) != len(labels):
        raise ExperimentError(f"--label-by {','.join(label_by or [])} gives several arms the same label: "
                         f"{sorted(labels.values())}")
    return {labels[key]: sorted(rs, key=lambda r: str(r.seed)) for key, rs in arms.items()}


def _label(cfg: dict[str, Any], configs: dict[str, dict[str, Any]], label_by: Optional[list[str]]) -> str:
    if label_by:
        return ", ".join(f"{k}={_short(cfg.get(k))}" for k in label_by)
    label = describe_regularizers(cfg.get(REG_KEY))
    twins = [c for c in configs.values() if describe_regularizers(c.get(REG_KEY)) == label]
    differing = sorted(k for k in set().union(*twins) if k != REG_KEY and len({_short(c.get(k)) for c in twins}) > 1)
    return ", ".join([label, *(f"{k}={_short(cfg.get(k))}" for k in differing)])


def last_value(records: list[dict[str, Any]], key: str) -> float:
    """The value at the last record that has `key` (nan when none has it)."""
    for rec in reversed(records):
        if key in rec:
            return float(rec[key])
    return math.nan


def layers_logged(record: dict[str, Any]) -> int:
    """How many layers' Psi_l a record holds (jump/psi_<l>; not jump/psi_L_before_norm)."""
    return sum(1 for k in record if k.startswith(PSI_PREFIX) and k[len(PSI_PREFIX):].isdigit())


def final_profile(records: list[dict[str, Any]]) -> list[float]:
    """Psi_1..Psi_L at the last record holding a jump profile ([] when the monitor never ran)."""
    for rec in reversed(records):
        if f"{PSI_PREFIX}1" in rec:
            n = layers_logged(rec)
            return [float(rec[f"{PSI_PREFIX}{l}"]) for l in range(1, n + 1)]
    return []


def middle_psi(profile: list[float]) -> float:
    """Mean of Psi_2..Psi_{L-1}: the quiet middle the jump at L stands out from (nan when L < 3)."""
    middle = profile[1:-1]
    return sum(middle) / len(middle) if middle else math.nan


def top_rise(profile: list[float]) -> float:
    """zeta_(L-1) = 100 (max(0, Psi_(L-1) - Psi_(L-2)) + max(0, Psi_L - Psi_(L-1))): the paper's jump rate from
    layer L-1, the rise over the top two layers. Where a jump lands on L-1 in some seeds and on L in others,
    zeta_L is 0 in the former; this counts both (nan when L < 3)."""
    if len(profile) < 3:
        return math.nan
    import torch

    from regularizers.jump import jump_rate

    return float(jump_rate(torch.tensor(profile, dtype=torch.float64), len(profile) - 1))


def curve(records: list[dict[str, Any]], key: str) -> dict[int, float]:
    """step -> value of `key` at the steps where it was logged (SIGNED_JUMP: derived from the profile)."""
    if key == SIGNED_JUMP:
        return {int(r["step"]): signed_jump(r) for r in records if f"{PSI_PREFIX}2" in r}
    if key == TOP_RISE:
        return {int(r["step"]): top_rise(final_profile([r])) for r in records if f"{PSI_PREFIX}3" in r}
    return {int(r["step"]): float(r[key]) for r in records if key in r}


def final_point(records: list[dict[str, Any]], key: str) -> float:
    """The value of `key` (a metrics.jsonl key or a derived curve) at its last logged step (nan when never)."""
    points = curve(records, key)
    return points[max(points)] if points else math.nan


def window_slope(records: list[dict[str, Any]], key: str, window: tuple[int, int], per: int = 1) -> float:
    """Least-squares slope of `key` against step over the logged steps first <= step <= last, per `per` steps."""
    points = {s: v for s, v in curve(records, key).items() if window[0] <= s <= window[1]}
    return per * slope(list(points), list(points.values()))


def signed_jump(record: dict[str, Any]) -> float:
    """100 (Psi_L - Psi_{L-1}) of a logged profile: zeta_L before its max(0, .), so the plot shows a jump
    approaching (negative, rising) as well as one that has formed."""
    n = layers_logged(record)
    return 100.0 * (float(record[f"{PSI_PREFIX}{n}"]) - float(record[f"{PSI_PREFIX}{n - 1}"]))


def band(runs: list[Run], key: str) -> tuple[list[int], list[float], list[float]]:
    """(steps logged in every run, mean, half-width of the 95% t interval over runs; 0 for a single run)."""
    return band_of([curve(r.records, key) for r in runs])


def band_of(curves: list[dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
    """`band` of curves given as step -> value."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    stats = [mean_std(c[s] for c in curves) for s in steps]
    return steps, [m for m, _, _ in stats], [0.0 if n < 2 else ci_halfwidth(s, n) for _, s, n in stats]


def final_values(arms: dict[str, list[Run]]) -> dict[str, dict[str, list[float]]]:
    """label -> metric -> each seed's final value (val loss, zeta_L, middle Psi, every eval/<task>/<metric>)."""
    out = {}
    for label, runs in arms.items():
        profiles = [final_profile(r.records) for r in runs]
        row = {
            "final step": [last_value(r.records, "step") for r in runs],
            "val/loss": [last_value(r.records, "val/loss") for r in runs],
            "zeta_L": [last_value(r.records, "jump/zeta_L") for r in runs],
            "middle Psi": [middle_psi(p) for p in profiles],
            TOP_RISE: [top_rise(p) for p in profiles],
            "Psi_(L-1)": [p[-2] if len(p) > 1 else math.nan for p in profiles],
            "Psi_L": [p[-1] if p else math.nan for p in profiles],
        }
        for key in sorted({k for r in runs for rec in r.records for k in rec if k.startswith("eval/")}):
            row[key] = [last_value(r.records, key) for r in runs]
        out[label] = row
    return out


def summarize(arms: dict[str, list[Run]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """label -> metric -> (mean, std, n) over the arm's seeds, for the compare.md tables."""
    return {label: {k: mean_std(v) for k, v in row.items()} for label, row in final_values(arms).items()}


def fmt(stat: tuple[float, float, int], digits: int = 4) -> str:
    """'mean ± h' with h the half-width of the 95% t interval ('mean' for one seed, 'n/a' for none)."""
    mean, std, n = stat
    if n == 0:
        return "n/a"
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {ci_halfwidth(std, n):.{digits}f}"


def fmt_diff(d: Optional[Difference], digits: int = 4) -> str:
    if d is None:
        return "n/a (< 2 seeds)"
    if math.isnan(d.p):  # no variance on either side: scipy gives no test
        return f"{d.diff:+.{digits}f} (no seed-to-seed variance: no test)"
    verdict = "within noise" if d.within_noise else "differs"
    return f"{d.diff:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}], p={d.p:.3g}, {verdict}"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_bands(ax, arms: dict[str, list[Run]], key: str, title: str, ylabel: str) -> None:
    for label, runs in arms.items():
        steps, mean, std = band(runs, key)
        if not steps:
            continue
        line, = ax.plot(steps, mean, label=f"{label} (n={len(runs)})")
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.2)
    decorate(ax, title, "step", ylabel)


def decorate(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot_all(arms: dict[str, list[Run]], out: Path) -> list[Path]:
    """loss.png (train and val), zeta.png (zeta_L, the signed 100 (Psi_L - Psi_(L-1)), zeta_(L-1)) and
    profile.png; bands are the 95% t intervals over seeds."""
    plt = pyplot()
    paths = [out / "loss.png", out / "zeta.png", out / "profile.png"]
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    _plot_bands(train_ax, arms, "loss", "Train loss (mean, 95% CI over seeds)", "loss (incl. regularizers)")
    _plot_bands(val_ax, arms, "val/loss", "Validation loss (mean, 95% CI over seeds)", "val loss (LM cross-entropy)")
    save_figure(fig, paths[0])
    fig, (zeta_ax, signed_ax, rise_ax) = plt.subplots(1, 3, figsize=(16, 4.2))
    _plot_bands(zeta_ax, arms, "jump/zeta_L", "Jump strength zeta_L (mean, 95% CI over seeds)",
                "zeta_L = 100 max(0, Psi_L - Psi_(L-1))")
    _plot_bands(signed_ax, arms, SIGNED_JUMP, "Before the max: the jump forming (mean, 95% CI)", SIGNED_JUMP)
    signed_ax.axhline(0.0, color="black", lw=0.8)
    _plot_bands(rise_ax, arms, TOP_RISE, "Rise over the top two layers (mean, 95% CI)", TOP_RISE)
    save_figure(fig, paths[1])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, runs in arms.items():
        profiles = [p for p in (final_profile(r.records) for r in runs) if p]
        depth = min((len(p) for p in profiles), default=0)
        stats = [mean_std(p[l] for p in profiles) for l in range(depth)]
        if stats:
            ax.errorbar(range(1, depth + 1), [m for m, _, _ in stats],
                        yerr=[0.0 if n < 2 else ci_halfwidth(s, n) for _, s, n in stats], marker="o", capsize=3,
                        label=f"{label} (n={len(profiles)})")
    decorate(ax, "Final displacement profile (mean, 95% CI over seeds)", "layer l", "Psi_l")
    ax.xaxis.get_major_locator().set_params(integer=True)
    save_figure(fig, paths[2])
    return paths


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    pyplot().close(fig)


def run_dir_name(arm: str, seed: int) -> str:
    """`<arm>-s<seed>`: how the spec runner (experiments/arms.py) names an arm's run directories, and what
    --arm-from-dir reads."""
    return f"{arm}-s{seed}"


def arm_names_from_dirs(run_dirs: list[Path]) -> list[str]:
    """Each run's arm from its directory name (run_dir_name): how an experiment's runs are compared again by
    hand (extra seeds, a job scored later) under their spec's names."""
    names = []
    for d in run_dirs:
        match = re.fullmatch(r"(.+)-s\d+", Path(d).resolve().name)
        if match is None:
            raise ExperimentError(f"--arm-from-dir/--spec: {d} is not named <arm>-s<seed> (the spec runner's layout)")
        names.append(match.group(1))
    return names
