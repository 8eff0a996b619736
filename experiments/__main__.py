"""`python -m experiments SPEC.yaml --out DIR [...]`: run an experiment spec, resumably, and write its report.
(`python -m experiments lag|stack ...`: one LAG choice or one adaptive-stacking run, experiments/growth_cli.py.)

A spec names its `kind:`, one of the kinds registered in experiments/spec.py's KINDS (listed by `--help`).
Re-running the same command continues an interrupted experiment: finished runs are skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from experiments import arms, growth_cli, lag, peeling_planted, stacking  # noqa: F401 (each registers its kind)
from experiments.errors import ExperimentError
from experiments.spec import KINDS, OPTIONS, spec_kind
from settings.errors import user_errors


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    kinds = "\n".join(f"  {name}: {kind.doc}" for name, kind in KINDS.items())
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__, epilog=f"kinds:\n{kinds}",
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


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in growth_cli.COMMANDS:  # `python -m experiments lag|stack ...`: one growth choice or run
        return growth_cli.main(argv)
    args = parse_args(argv)
    return user_errors(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    name = spec_kind(args.spec)
    kind = KINDS[name]
    if stray := [OPTIONS[o] for o in OPTIONS if getattr(args, o) and o not in kind.options]:
        takes = ", ".join(OPTIONS[o] for o in kind.options) or "only --out (its settings live in the spec)"
        raise ExperimentError(f"{stray[0]} does not apply to {args.spec}, a {name!r} spec; it takes {takes}")
    return kind.run(args)


if __name__ == "__main__":
    sys.exit(main())
