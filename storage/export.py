"""Export a growlm checkpoint (any ZeRO stage; consolidated on one process) to a Hugging Face folder.

    python -m storage.export runs/tiny/checkpoints/step_300 /tmp/tiny-hf
    python -m storage.export runs/tiny/checkpoints /tmp/tiny-hf      # the checkpoint `latest` names
    python -m storage.export runs/tiny/checkpoints/latest /tmp/tiny-hf   # the same

    python -m storage.export path/to/hf-model /tmp/copy        # a transformers Llama folder (round trip)

The folder loads with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` (the run's
sentencepiece model as a LlamaTokenizer, or the HF tokenizer files it was trained with).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from settings.errors import user_errors
from model.hf import check_export_target, save_hf_folder
from storage.folders import locate
from storage.tokenizer_files import find_tokenizer, tokenizer_files
from storage.weights import load_weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m storage.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a checkpoints/step_<N> dir, a checkpoints/ root or its latest file, a weights folder or an HF folder")
    p.add_argument("out", type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in `out` (only a folder an export wrote: it holds its marker)")
    args = p.parse_args(argv)
    return user_errors(lambda: export(args))


def export(args: argparse.Namespace) -> int:
    check_export_target(args.out, args.overwrite)  # before any work: a refused target costs nothing
    source = locate(args.checkpoint)
    cfg, state = load_weights(source)
    tokenizer = find_tokenizer(source)
    save_hf_folder(state, cfg, args.out, tokenizer_files=tokenizer_files(tokenizer) if tokenizer else None,
                   overwrite=args.overwrite)
    print(f"exported {source} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
