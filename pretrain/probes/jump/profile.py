"""Per-layer displacement profile Psi_1..Psi_L and jump strength zeta_L of Hugging Face causal LMs.

    python -m pretrain.probes.jump.profile /tmp/tiny-hf path/to/llama-3.2-1b --out /tmp/jumps
    python -m pretrain.probes.jump.profile /tmp/tiny-hf --out /tmp/jumps --final-norm exclude --text-file notes.txt

Writes <out>/<model>.json per model and <out>/jump_profile.png with every model's profile against relative
depth l/L (models of different depth compare, as in the paper). The metric is regularizers/jump.py's, so
the numbers equal the in-training JumpMonitor's when form and final_norm are set alike (docs/methods.md §1).

Which h_L: transformers returns the last hidden state *after* the model's final norm (and has changed this
between versions). To be independent of that, h_L and norm(h_L) are read with a forward hook on the final
norm module (its input and output); h_0..h_{L-1} come from output_hidden_states. final_norm=include
measures Psi_L against norm(h_L), exclude against the raw residual stream h_L.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from settings.errors import UserError, user_errors
from settings.fields import a_device, above, flag
from regularizers.jump import FORMS, displacement_profile, zeta_final
from storage.io import atomic_save_figure, atomic_write_text, check_output_folder, claim_output_folder

MARKER = ".growlm-jump-profile"
"""Marks an --out folder this command made (re-running it there replaces its files)."""


class ProfileError(UserError, ValueError):
    """A model folder or text this command cannot measure; the message names it."""

DEFAULT_CHARS = 200_000
"""Default text: the first pydoc topics (sorted by name), the prose start of growlm's embedded corpus."""


def default_text(max_chars: int = DEFAULT_CHARS) -> str:
    """A fixed, offline sample: pydoc topics in sorted order, as pretrain/data/corpus.py reads them."""
    from pydoc_data.topics import topics

    parts, total = [], 0
    for name in sorted(topics):
        parts.append(topics[name])
        total += len(topics[name])
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


def token_rows(token_ids: list[int], seq_len: int, max_tokens: int) -> torch.Tensor:
    """[rows, seq_len] of consecutive tokens (the remainder dropped), so no padding or mask is needed."""
    ids = token_ids[:max_tokens]
    if len(ids) < 2:
        raise ProfileError(f"need at least 2 tokens to measure a profile, the text gave {len(ids)}")
    seq_len = min(seq_len, len(ids))
    rows = len(ids) // seq_len
    return torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def final_norm_module(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder's final norm (Llama family: model.model.norm)."""
    norm = getattr(model.get_decoder(), "norm", None)
    if norm is None:
        raise ProfileError(f"{type(model).__name__} has no decoder.norm; only Llama-family layouts are supported")
    return norm


@torch.no_grad()
def hf_profile(model: torch.nn.Module, tokens: torch.Tensor, form: str = "cosine", final_norm: str = "include",
               batch_size: int = 8) -> torch.Tensor:
    """Psi_1..Psi_L of an HF causal LM on tokens [rows, seq]: the token-weighted mean over all rows."""
    if final_norm not in ("include", "exclude"):
        raise ValueError(f"final_norm must be include or exclude, got {final_norm!r}")
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured["h_L"], captured["normed"] = args[0], output

    handle = final_norm_module(model).register_forward_hook(hook)
    device = next(model.parameters()).device
    try:
        total = None
        for batch in tokens.split(batch_size):
            out = model(batch.to(device), output_hidden_states=True)
            if len(out.hidden_states) != model.config.num_hidden_layers + 1:
                raise ValueError(f"expected h_0..h_L ({model.config.num_hidden_layers + 1} hidden states), "
                                 f"got {len(out.hidden_states)}")
            states = [*out.hidden_states[:-1], captured["h_L"]]
            final = captured["normed"] if final_norm == "include" else None
            profile = displacement_profile(states, form=form, final=final).double().cpu() * batch.numel()
            total = profile if total is None else total + profile
    finally:
        handle.remove()
    return (total / tokens.numel()).float()


def load_model(model_dir: Path, device: str = "cpu") -> tuple[torch.nn.Module, object]:
    """(model in fp32, eval mode; tokenizer) from a local HF folder; names the folder when it is not one."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise ProfileError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    except (OSError, ValueError, SafetensorError) as err:
        raise ProfileError(f"{model_dir}: transformers cannot load it as a causal LM ({err})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise ProfileError(f"{model_dir}: no loadable tokenizer ({err})") from None
    return model, tokenizer


def measure(model_dir: Path, text: str, max_tokens: int, seq_len: int, form: str, final_norm: str,
            device: str = "cpu") -> dict[str, object]:
    """The JSON record for one model: its profile, zeta_L and everything needed to reproduce it."""
    model, tokenizer = load_model(model_dir, device)
    max_pos = getattr(model.config, "max_position_embeddings", None) or seq_len
    tokens = token_rows(tokenizer(text, verbose=False)["input_ids"], min(seq_len, max_pos), max_tokens)
    profile = hf_profile(model, tokens, form, final_norm)
    return {
        "model": str(model_dir), "n_layers": len(profile), "form": form, "final_norm": final_norm,
        "tokens": tokens.numel(), "seq_len": tokens.shape[1],
        "psi": profile.tolist(), "zeta_L": zeta_final(profile).item() if len(profile) > 1 else 0.0,
    }


def plot_profiles(records: dict[str, dict], path: Path) -> None:
    """One line per model: Psi_l against l/L."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, rec in records.items():
        n = rec["n_layers"]
        ax.plot([l / n for l in range(1, n + 1)], rec["psi"], marker="o",
                label=f"{name} (L={n}, zeta_L={rec['zeta_L']:.2f})")
    first = next(iter(records.values()))
    ax.set(xlabel="relative depth l / L", ylabel=f"Psi_l ({first['form']})", xlim=(0, 1.02),
           title=f"Displacement profile (h_L {first['final_norm']}s final norm)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def unique_names(dirs: list[Path]) -> list[str]:
    """File-safe names per model folder; repeated folder names get the parent prepended, then an index."""
    names = []
    for d in dirs:
        name = d.resolve().name
        if sum(x.resolve().name == name for x in dirs) > 1:
            name = f"{d.resolve().parent.name}_{name}"
        while name in names:
            name += "_"
        names.append(name)
    return names


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="Hugging Face causal LM folders (with a tokenizer)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the JSONs and the PNG")
    p.add_argument("--text-file", type=Path, help="UTF-8 text to measure on (default: pydoc topics)")
    p.add_argument("--max-tokens", type=flag(int, above(0)), default=8192, help="tokens measured per model")
    p.add_argument("--seq-len", type=flag(int, above(1)), default=512,
                   help="sequence length (capped at the model's maximum)")
    p.add_argument("--form", choices=FORMS, default="cosine", help="(1-cos)/2 or arccos(cos)/pi")
    p.add_argument("--final-norm", choices=("include", "exclude"), default="include",
                   help="h_L after the final norm (as HF's hidden states and the monitor's default) or before")
    p.add_argument("--device", type=flag(str, a_device()), default="cpu", help="torch device, e.g. cuda")
    args = p.parse_args(argv)
    if args.text_file is not None and not args.text_file.is_file():
        p.error(f"--text-file {args.text_file} does not exist")
    return user_errors(lambda: run(args))


def read_text(path: Path) -> str:
    """--text-file's text; a binary or empty file is named."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"--text-file {path} is not UTF-8 text") from None
    if not text.strip():
        raise ProfileError(f"--text-file {path} is empty: give text to measure on")
    return text


def run(args: argparse.Namespace) -> int:
    """Measure every model, then write: a model that cannot be measured leaves --out untouched."""
    check_output_folder(args.out, MARKER)
    text = read_text(args.text_file) if args.text_file else default_text()
    records = {}
    for name, model_dir in zip(unique_names(args.models), args.models):
        records[name] = measure(model_dir, text, args.max_tokens, args.seq_len, args.form, args.final_norm,
                                args.device)
        psi = ", ".join(f"{v:.4f}" for v in records[name]["psi"])
        print(f"{name}: zeta_L={records[name]['zeta_L']:.3f} psi=[{psi}]")
    claim_output_folder(args.out, MARKER)
    for name, rec in records.items():
        atomic_write_text(args.out / f"{name}.json", json.dumps(rec, indent=2) + "\n")
    plot_profiles(records, args.out / "jump_profile.png")
    print(f"wrote {args.out}/jump_profile.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
