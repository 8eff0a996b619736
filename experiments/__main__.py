"""`python -m experiments SPEC.yaml --out DIR [...]`: run an experiment spec, resumably, and write its report.
(`python -m experiments lag|stack ...`: one LAG choice or one adaptive-stacking run, experiments/growth_cli.py.)

Kinds of spec, told apart by their keys:
- arm x seed (`arms:`): every arm of a base config trained with every seed, then compare.md
  (experiments/arms.py; e.g. configs/experiments/jreg_cpu.yaml);
- LAG (`growths:`): sources, LAG over a pool of growth operators and from-scratch controls per seed, then
  experiment.md (experiments/lag.py; e.g. configs/experiments/lag_cpu.yaml);
- peeling against planted truth (`alphas:`): models with planted layers peeled, then planted.md
  (experiments/peeling_planted.py; configs/experiments/peeling_planted.yaml);
- gradual stacking (`adaptive_pool:`): adaptive and fixed stacking against scratch per seed, then stacking.md
  (experiments/stacking.py; configs/experiments/stacking_horizon.yaml).
Re-running the same command continues an interrupted experiment: finished runs are skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from experiments import arms, growth_cli
from experiments.errors import ExperimentError
from model.errors import user_errors
from storage.io import FileFormatError, read_yaml


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="experiment spec YAML (configs/experiments/*.yaml)")
    p.add_argument("--out", type=Path, required=True, help="experiment folder (runs, logs, the report and plots)")
    p.add_argument("--seeds", type=seed_list, help="comma-separated seeds of the spec's to run (default: all)")
    p.add_argument("--arms", type=name_list, help="arm x seed specs: comma-separated arm names to run (default: all)")
    p.add_argument("--growths", type=name_list, help="LAG specs: comma-separated growth names to run (default: all)")
    p.add_argument("--dry-run", action="store_true", help="arm x seed specs: print the launch commands and exit")
    p.add_argument("overrides", nargs="*", help="arm x seed specs: key=value overrides applied to every run")
    return p.parse_intermixed_args(argv)  # overrides may follow the options


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    return distinct(seeds, "--seeds")


def name_list(text: str) -> list[str]:
    """A comma-separated list of arm or growth names, each once."""
    return distinct(text.split(","), "--arms/--growths")


def distinct(items: list, flag: str) -> list:
    """`items`, refused naming the repeats when one is listed twice: one run would count as two seeds or arms."""
    repeated = sorted({str(i) for i in items if items.count(i) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{flag} lists {', '.join(repeated)} more than once: one run would be counted "
                                         "twice")
    return items


def spec_kind(path: Path) -> str:
    """'lag' for a spec with `growths:`, 'planted' with `alphas:`, 'stacking' with `adaptive_pool:`, 'arms'
    otherwise (its own loader names what is wrong with it)."""
    try:
        raw = read_yaml(path)
    except FileFormatError:
        return "arms"
    if not OmegaConf.is_dict(raw):
        return "arms"
    kinds = {"growths": "lag", "alphas": "planted", "adaptive_pool": "stacking"}
    return next((kind for key, kind in kinds.items() if key in raw), "arms")


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in growth_cli.COMMANDS:  # `python -m experiments lag|stack ...`: one growth choice or run
        return growth_cli.main(argv)
    args = parse_args(argv)
    return user_errors(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if spec_kind(args.spec) == "lag":
        if args.arms or args.dry_run or args.overrides:
            raise ExperimentError("--arms, --dry-run and overrides apply to arm x seed specs; a LAG spec takes "
                                  "--growths and --seeds (its overrides live in the spec)")
        from experiments.lag import main as run_lag_experiment

        return run_lag_experiment(args.spec, args.out, args.growths,
                                  args.seeds)
    if spec_kind(args.spec) == "planted":
        if args.arms or args.dry_run or args.overrides or args.growths or args.seeds:
            raise ExperimentError("a planted-peeling spec takes only --out (its seeds and settings live in the spec)")
        from experiments.peeling_planted import main as run_planted

        return run_planted(args.spec, args.out)
    if spec_kind(args.spec) == "stacking":
        if args.arms or args.dry_run or args.overrides or args.growths:
            raise ExperimentError("a stacking spec takes --out and --seeds (its settings live in the spec)")
        from experiments.stacking import main as run_stacking_experiment

        return run_stacking_experiment(args.spec, args.out, args.seeds)
    if args.growths:
        raise ExperimentError(f"--growths applies to LAG specs; {args.spec} is an arm x seed spec (use --arms)")
    return arms.run(args.spec, args.out.resolve(), args.arms, args.seeds,
                    tuple(args.overrides), args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
