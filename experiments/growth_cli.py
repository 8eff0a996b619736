"""`python -m experiments {lag,stack} ...`: choose a growth operator by LAG, or train with adaptive gradual stacking
(LAG measured over seeds is an experiment spec: `python -m experiments SPEC`). Both orchestrate runs through the
experiments' launcher (experiments/launcher.py); growing one folder is `python -m growth grow`. Every command
refuses bad input before writing anything, naming the problem."""
from __future__ import annotations

import argparse
from pathlib import Path

from experiments.launcher import exit_code
from growth import GrowthError, available_operators
from growth.folders import source_info

COMMANDS = ("lag", "stack")
_OPS = ", ".join(available_operators())


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (0 steps or ranks is a typo, never "the default")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    lag = sub.add_parser("lag", help="LAG: grow with every operator of a pool, train each k steps, pick by step-k loss")
    _source_and_run_args(lag)
    lag.add_argument("--to", nargs="+", required=True, help="target shape (as for grow)")
    lag.add_argument("--pool", required=True,
                     help=f"comma-separated candidates, each OP or OP:k=v[:k=v] (operators: {_OPS})")
    lag.add_argument("--lag-steps", type=positive_int, required=True, help="k: steps each candidate trains before the choice")
    lag.add_argument("--carry", action="store_true",
                     help="candidates continue the source's Adam moments, step and data order (train.carry) instead "
                          "of a fresh optimizer and a new warmup")
    lag.add_argument("--validate-steps", type=positive_int, help="also train every candidate to this step and report the "
                                                        "rank correlation of step-0 and step-k loss with it")
    lag.add_argument("--continue-steps", type=positive_int,
                     help="continue the winner's run to this step (its run dir resumed with a larger train.steps; "
                          "with --validate-steps M >= this, the winner is already there)")

    st = sub.add_parser("stack", help="adaptive gradual stacking: LAG chooses the stacking at every stage")
    st.add_argument("--config", type=Path, required=True, help="run config; its model is the stage-0 model")
    st.add_argument("--plan", type=Path, help="YAML with stages [{at_step, depth}], pool, lag_steps, steps")
    st.add_argument("--schedule", help='stages as "at_step:depth,...", e.g. "100:4,200:8"')
    st.add_argument("--pool", help="stacking candidates (default stack_top,stack_middle:block=all,stack; block=all is "
                                   "every block size the stage allows)")
    st.add_argument("--lag-steps", type=positive_int, help="lag of every stage's choice")
    st.add_argument("--steps", type=positive_int, help="total steps of the whole run (default: the plan's, else train.steps)")
    st.add_argument("--out", type=Path, required=True, help="experiment directory (re-run to resume)")
    st.add_argument("--ranks", type=positive_int, default=2, help="ranks per run (--num_gpus of the launcher)")
    st.add_argument("--carry", action="store_true", help="carry Adam moments, step and data position across stages "
                    "(one run grown in place) instead of a fresh optimizer and warmup per stage")
    st.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    return p.parse_args(argv)


def _source_and_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, type=Path, help="checkpoint to grow (as for grow)")
    p.add_argument("--config", type=Path,
                   help="run config of the grown runs (default: the source checkpoint's resolved config.yaml)")
    p.add_argument("--out", type=Path, required=True, help="experiment directory (re-run to resume)")
    p.add_argument("--ranks", type=positive_int, default=2, help="ranks per run (--num_gpus of the launcher)")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run, e.g. deepspeed.zero_stage=3")


def cmd_lag(args: argparse.Namespace) -> int:
    from experiments.lag_choice import LagPlan, parse_pool, run_lag

    plan = LagPlan(source=args.source, target=args.to, pool=parse_pool(args.pool), lag_steps=args.lag_steps,
                   config=args.config or _source_config(args.source), out=args.out, overrides=args.overrides,
                   ranks=args.ranks, validate_steps=args.validate_steps, continue_steps=args.continue_steps,
                   carry=args.carry)
    run_lag(plan)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from experiments.stacking_run import StackingPlan, run_stacking

    run_stacking(StackingPlan.from_args(args))
    return 0


def _source_config(source: Path) -> Path:
    """The resolved config the source checkpoint was trained with: data, tokenizer and optimizer carry over."""
    config = Path(source_info(source)["path"]) / "config.yaml"
    if not config.is_file():
        raise GrowthError(f"{source} carries no config.yaml (a weights folder?): pass --config CONFIG.yaml")
    return config


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    commands = {"lag": cmd_lag, "stack": cmd_stack}
    return exit_code(lambda: commands[args.command](args))
