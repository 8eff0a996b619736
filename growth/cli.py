"""`python -m growth grow ...`: grow a checkpoint with one operator into a weights folder, and print the command that
trains it. Choosing the operator by LAG and adaptive gradual stacking train runs, so they are experiments:
`python -m experiments {lag,stack} ...` (experiments/growth_cli.py). Bad input is refused before anything is
written, naming the problem."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from growth import available_operators
from growth.folders import grow_folder, model_overrides, parse_params
from launch.command import launch_argv
from settings.errors import user_errors
from storage.tokenizer_files import find_tokenizer

_OPS = ", ".join(available_operators())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m growth", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grow", help="grow a checkpoint into a larger model with one operator")
    g.add_argument("--from", dest="source", required=True, type=Path,
                   help="training checkpoint dir (runs/X/checkpoints/step_N), a checkpoints/ root, or weights folder")
    g.add_argument("--op", required=True, help=f"growth operator: {_OPS}")
    g.add_argument("--to", nargs="+", required=True,
                   help="target shape: a model YAML, a preset name, or overrides of the source's (n_layers=8)")
    g.add_argument("--out", required=True, type=Path, help="new weights folder to write")
    g.add_argument("--carry", action="store_true",
                   help="also map the source's Adam moments and keep its step and data position (carry.pt), so a "
                        "run with train.carry continues its training")
    g.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="operator parameter, e.g. block=2 (stack_middle), position=interleave (zero_block)")
    return p.parse_args(argv)


def cmd_grow(args: argparse.Namespace) -> int:
    result = grow_folder(args.source, args.op, args.to, args.out, parse_params(args.param), carry=args.carry)
    rec = result.record
    print(f"grew {rec['source']} (step {rec['source_step']}) with {rec['operator']} -> {args.out}: "
          f"{rec['source_config']['n_layers']} -> {result.config.n_layers} layers, dim {result.config.dim}, "
          f"function-preserving: {rec.get('function_preserving')}")
    if "layer_map" in rec:
        print(f"layer map (new layer i <- source layer): {rec['layer_map']}")
    config = Path(rec["source"]) / "config.yaml"
    own = find_tokenizer(args.out)
    tokenizer = [f"data.tokenizer={own.resolve()}"] if own else []
    cmd = launch_argv(config if config.is_file() else "CONFIG.yaml", [
        f"train.init_from={args.out.resolve()}", *model_overrides(result.config), *tokenizer,
        f"run.name={args.out.name}"], python="python")
    if args.carry:
        cmd += ["train.carry.optimizer=true", "train.carry.schedule=continue"]
    print(f"next, train it ({'carried optimizer, continued schedule' if args.carry else 'fresh optimizer'}):\n  "
          + shlex.join(cmd))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return user_errors(lambda: cmd_grow(args))


if __name__ == "__main__":
    sys.exit(main())
