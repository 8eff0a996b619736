"""`python -m pretrain.data prepare SOURCE --tokenizer TOK --out DIR [--shards N] [--procs P] [--shard-range A:B]`

Tokenizes a text source (anything `data.source` takes: local .txt/.jsonl/.json/.parquet files or globs,
`hf:<dataset>`, `embedded`) into token shards that `data.sources: [{path: DIR}]` trains on. Resumable: a rerun
writes only the shards that are missing. See pretrain/data/prepare.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from settings.errors import user_errors
from pretrain.data.errors import DataError
from pretrain.data.prepare import PrepareJob, run
from pretrain.data.shards import META
from pretrain.data.tokenizer import vocab_size_of
from settings.fields import above, flag, strictly_between
from storage.io import check_output_folder


def parse_range(text: str | None, num_shards: int) -> tuple[int, int]:
    if text is None:
        return 0, num_shards
    lo, sep, hi = text.partition(":")
    try:
        bounds = int(lo), int(hi)
    except ValueError:
        bounds = (-1, -1)
    if not sep or not 0 <= bounds[0] < bounds[1] <= num_shards:
        raise DataError(f"--shard-range {text!r} must be A:B with 0 <= A < B <= --shards={num_shards}")
    return bounds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="tokenize a source into token shards")
    prep.add_argument("source", help="what data.source takes")
    prep.add_argument("--tokenizer", required=True, type=Path, help="a sentencepiece .model or an HF tokenizer")
    prep.add_argument("--out", required=True, type=Path, help="the shard directory")
    prep.add_argument("--shards", type=flag(int, above(0)), default=16,
                      help="input shards (units of work and of resumption)")
    prep.add_argument("--shard-range", help="A:B: only shards A..B-1 (split the work across nodes)")
    prep.add_argument("--procs", type=flag(int, above(0)), default=2, help="worker processes")
    prep.add_argument("--text-field", default="text")
    prep.add_argument("--val-fraction", type=flag(float, strictly_between(0.0, 1.0)), default=0.01,
                      help="share of documents held out for validation")
    prep.add_argument("--seed", type=int, default=0, help="salt of the hash that picks val documents")
    prep.add_argument("--cache-dir", default=".cache/growlm", help="datasets' cache of the source")
    args = p.parse_args(argv)
    return user_errors(lambda: prepare(args))


def prepare(args: argparse.Namespace) -> int:
    check_output_folder(args.out, META)  # first: a refused --out costs nothing
    job = PrepareJob(source=args.source, tokenizer=args.tokenizer.resolve(), out=args.out,
                     vocab_size=vocab_size_of(args.tokenizer), num_shards=args.shards,
                     shard_range=parse_range(args.shard_range, args.shards), procs=args.procs,
                     text_field=args.text_field, val_fraction=args.val_fraction, seed=args.seed,
                     cache_dir=args.cache_dir)
    print(json.dumps(run(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
