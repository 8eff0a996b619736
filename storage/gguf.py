"""`python -m storage.gguf FILE.gguf OUT_DIR`: a GGUF file of a Llama-family model as a plain transformers folder
(fp32 weights and its tokenizer), which every growlm tool reads as it reads any Hugging Face folder: `model=`,
`train.init_from=`, `data.tokenizer=`, export, growth, peeling and the jump profile.

A converter rather than `.gguf` accepted everywhere: transformers (with the `gguf` package) dequantizes the whole
file to fp32 on every load — half a minute for a 135M model on 2 cores — and a converted folder leaves one
format for every tool, with no second loading path to keep equal. The file is read by `gguf` and
`transformers`; nothing here parses GGUF itself.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from pathlib import Path

from settings.errors import UserError, user_errors

ARCHITECTURES = ("llama",)
"""`general.architecture` values growlm's Llama computes (others are refused before the slow load)."""
PLAIN_TYPES = ("F32", "F16", "BF16")
MARKER = ".growlm-gguf"
"""Marks a folder this converter wrote and lists its files: converting into it again replaces them, and is
refused when the folder holds anything else (a file the user added); any other non-empty folder is refused."""


class GgufError(UserError, ValueError):
    """A GGUF file growlm cannot take: missing, unreadable, another architecture or a quantization `gguf` cannot
    dequantize; the message names it and what would be valid."""


def inspect(path: Path) -> dict[str, object]:
    """The file's architecture and tensor types, refusing what the conversion could not turn into a Llama."""
    import gguf
    import numpy as np
    from gguf import quants

    if Path(path).is_dir():
        found = sorted(p.name for p in Path(path).glob("*.gguf"))
        holds = f" (it holds {found[:5]})" if found else ""
        raise GgufError(f"{path} is a folder; give the .gguf file itself{holds}")
    if not Path(path).is_file():
        raise GgufError(f"{path} does not exist (give a .gguf file)")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError) as err:
        raise GgufError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err})") from None
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field is not None else "<none>"
    if arch not in ARCHITECTURES:
        raise GgufError(f"{path}: architecture {arch!r} is not one growlm computes; valid: {list(ARCHITECTURES)}")
    first_of_type = {}
    for tensor in reader.tensors:
        first_of_type.setdefault(tensor.tensor_type.name, tensor)
    for name, tensor in first_of_type.items():
        if name in PLAIN_TYPES:
            continue
        try:
            quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        except NotImplementedError:
            raise GgufError(f"{path}: tensor {tensor.name} is quantized as {name}, which the gguf package cannot "
                            "dequantize; convert the model with another quantization (e.g. Q8_0, Q4_K, F16)") from None
    return {"architecture": arch, "tensor_types": sorted(first_of_type), "tensors": len(reader.tensors)}


def convert(path: Path, out: Path) -> Path:
    """Write the model (fp32) and its tokenizer into `out` (new or empty), atomically: a folder is complete or
    absent."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from model.hf import check_export_target, export_marker

    path, out = Path(path).resolve(), Path(out)
    check_export_target(out, overwrite=True, marker=MARKER)  # before the slow load: new, empty, or a conversion
    inspect(path)
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)  # transformers will not save a model it marks as GGUF-quantized
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(quantized.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()  # mkdir, not mkdtemp: the folder gets the user's umask, as any folder they make
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(export_marker([p.name for p in tmp.iterdir()], f"growlm gguf from {path}"))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m storage.gguf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf", type=Path, help="a .gguf file of a Llama-family model")
    p.add_argument("out", type=Path, help="the transformers folder to write (new or empty)")
    args = p.parse_args(argv)

    def work() -> int:
        convert(args.gguf, args.out)
        print(f"wrote {args.out} (fp32 weights and tokenizer from {args.gguf})")
        return 0

    return user_errors(work)


if __name__ == "__main__":
    sys.exit(main())
