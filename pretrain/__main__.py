"""`python -m pretrain CONFIG.yaml [key=value ...]`: what every rank runs (the launcher starts it).

`--check` validates the config and builds the tokenizer and data caches in this one process, then exits:
the launcher runs it first so bad input is refused before any rank starts.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from settings.errors import user_errors
from pretrain.config import load_config, to_yaml
from pretrain.dist import CollectiveTimeout


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="run config YAML (defaults when omitted)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 deepspeed.zero_stage=3")
    p.add_argument("--check", action="store_true", help="validate the config and prepare the data, then exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--not-first-node", action="store_true", help=argparse.SUPPRESS)  # --check on node_rank > 0
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by the launcher
    args = p.parse_intermixed_args(argv)  # flags may come after the overrides, as in `... key=val --check`
    if args.config and "=" in args.config:  # only overrides were given
        args.overrides.insert(0, args.config)
        args.config = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return user_errors(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """--print-config, --check or the training run; a collective timeout names this rank (exit 3)."""
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:  # the concrete precision, as the ranks will resolve it
            from pretrain import dist, precision

            print(to_yaml(precision.resolve(cfg, dist.device())[0]))
            return 0
        from pretrain import extensions

        extensions.refuse_stale_build_locks()  # in the check and in every rank: a launch may skip the check
        if args.check:  # the start every rank will decide: init_from, the resume, the data (every mixture source)
            from pretrain import dist, runlock, startup

            if not args.not_first_node:  # node 0's rank 0 may hold the run directory already: that is this run
                runlock.check_free(cfg.run_dir)
            start = startup.decide(cfg, dist.device(), world=None)
            print(f"config ok; data: {start.data.stats}")
            return 0
        return train(cfg)
    except CollectiveTimeout as err:
        print(f"error: rank {os.environ.get('RANK', 0)}: {err}", file=sys.stderr)
        return 3


def train(cfg) -> int:
    from pretrain import dist
    from pretrain.dist import init_distributed
    from pretrain.trainer import Trainer

    init_distributed(cfg.deepspeed.collective_timeout_s, cfg.deepspeed.rendezvous_bind)
    logging.basicConfig(level=logging.INFO if dist.is_main() else logging.WARNING,
                        format="[growlm %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    try:
        Trainer(cfg).fit()
    except RuntimeError as err:
        if dist.world_size() > 1 and dist.looks_like_timeout(err):
            raise CollectiveTimeout(dist.timeout_diagnosis(cfg.deepspeed.collective_timeout_s)) from err
        raise
    dist.barrier()
    import torch.distributed

    torch.distributed.destroy_process_group()
    return 0


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown once everything is written (checkpoints atomically, metrics
    closed). On CPU ranks that teardown occasionally aborted in C++ ("terminate called without an active
    exception", exit -6) after a complete run, which the launcher and any scheduler read as a failed job."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
