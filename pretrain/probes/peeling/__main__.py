"""`python -m pretrain.probes.peeling --checkpoint DIR [...]`: peeling bounds of one checkpoint.

DIR is a training checkpoint (`runs/<run>/checkpoints/step_<N>`, any ZeRO stage), a `checkpoints/` root (its
latest), or a weights folder (model.pt + model_config.json). Outputs go to `<run>/jobs/peeling/step_<N>/`
(a weights folder: `<parent>/jobs/peeling/<name>/`) unless --out is given. Method: docs/methods.md §3, our
reconstruction of arXiv 2605.02853.
"""
from __future__ import annotations

import argparse
import logging
import sys

from settings.errors import user_errors
from pretrain.probes.cli import add_arguments, from_args
from pretrain.probes.peeling.settings import PeelingSettings, check_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pretrain.probes.peeling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, checkpoints/ root, or weights folder")
    p.add_argument("--config", default=None,
                   help="run config naming the calibration data (default: the checkpoint's config.yaml, "
                        "else the embedded default)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/jobs/peeling/step_<N>)")
    add_arguments(p, PeelingSettings)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[peeling %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    settings = from_args(PeelingSettings, args)
    return user_errors(lambda: run(args, settings), prefix="peeling: ")


def run(args: argparse.Namespace, settings: PeelingSettings) -> int:
    from pretrain.probes.peeling.job import run_job
    from pretrain.probes.peeling.report import format_table

    check_settings(settings)  # before any loading: a typo fails in a second
    bounds, out = run_job(args.checkpoint, settings, config=args.config, out=args.out)
    print(format_table(bounds))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
