"""`python -m pretrain.probes.lm_eval --checkpoint DIR [--tasks a,b] [...]`: lm-eval scores of one checkpoint.

DIR is a training checkpoint (`runs/<run>/checkpoints/step_<N>`, any ZeRO stage), a `checkpoints/` root (its
latest), or a weights folder holding a tokenizer.model. Scores go to `<run>/jobs/lm_eval/step_<N>/results.json`
and, for a run's checkpoint, into `<run>/jobs/lm_eval/metrics.jsonl` as `eval/<task>/<metric>` (a weights
folder: `<parent>/jobs/lm_eval/<name>/results.json`). Runs offline: tasks come from local files
(configs/eval_tasks/README.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from settings.errors import user_errors
from pretrain.probes.cli import add_arguments, from_args
from pretrain.probes.lm_eval.settings import OFFLINE_ENV, LmEvalSettings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pretrain.probes.lm_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, checkpoints/ root, or weights folder")
    add_arguments(p, LmEvalSettings)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key, value in OFFLINE_ENV.items():  # before datasets / huggingface_hub are imported: they read it once
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="[lm_eval %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    settings = from_args(LmEvalSettings, args)
    return user_errors(lambda: run(args, settings), prefix="lm_eval: ")


def run(args: argparse.Namespace, settings: LmEvalSettings) -> int:
    from pretrain.probes.lm_eval.run import run_job

    payload, path = run_job(args.checkpoint, settings)
    for key, value in payload["scores"].items():
        print(f"{key:50s} {value:.4f}")
    print(f"wrote {path} ({payload['seconds']['total']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
