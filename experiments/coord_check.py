"""µP's coordinate check (Tensor Programs V, section 6): the typical size of every layer's activations after a few
AdamW steps, across widths, with and without µP (`python scripts/coord_check.py`).

Under the standard parametrization an Adam step moves every weight entry by about lr, so a layer's output moves
by about lr x width: activations grow with width and an lr tuned at one width blows up at a larger one. Under
µP (model/mup.py) they stay the same size, which is what makes the lr transfer. Models are trained exactly as
runs train them (the parameter groups of pretrain/optim.py), in fp32 on one process, on tokens drawn from a
fixed Zipf distribution (a learnable signal, no data to prepare). Widths grow as the growth operators grow
them: heads at a fixed head_dim, ffn_dim in proportion.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from model import Llama, ModelConfig
from model.config import MupConfig
from pretrain.config import TrainConfig
from pretrain.optim import build_optimizer
from settings.fields import above, flag

WIDTHS = (64, 128, 256, 512)
HEAD_DIM, FFN_RATIO, N_LAYERS, VOCAB, SEQ = 16, 2, 2, 256, 32


def width_config(width: int, base_width: int | None) -> ModelConfig:
    """The coordinate check's model at `width`; µP with `base_width` (None: standard parametrization)."""
    heads = width // HEAD_DIM
    return ModelConfig(dim=width, n_layers=N_LAYERS, n_heads=heads, n_kv_heads=heads, ffn_dim=FFN_RATIO * width,
                       vocab_size=VOCAB, max_seq_len=SEQ, mup=MupConfig(base_width) if base_width else None)


def zipf_tokens(n: int, gen: torch.Generator) -> torch.Tensor:
    """[n, SEQ + 1] tokens, i.i.d. with probability proportional to 1 / (rank + 1)."""
    weights = 1.0 / torch.arange(1, VOCAB + 1, dtype=torch.float64)
    return torch.multinomial(weights, n * (SEQ + 1), replacement=True, generator=gen).view(n, SEQ + 1)


def activation_scales(cfg: ModelConfig, steps: int, lr: float, seed: int, batch: int = 8) -> dict[str, float]:
    """mean |x| of each residual stream h_0..h_L ("h0".."hL") and of the logits, on one held batch, after `steps`
    AdamW steps (no weight decay, no warmup: the raw parametrization) with fresh batches."""
    torch.manual_seed(seed)
    model = Llama(cfg)
    optimizer = build_optimizer(model, TrainConfig(lr=lr, weight_decay=0.0, warmup_steps=0, grad_clip=0.0))
    gen = torch.Generator().manual_seed(seed)
    held = zipf_tokens(batch, gen)
    for _ in range(steps):
        tokens = zipf_tokens(batch, gen)
        logits = model(tokens[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = model(held[:, :-1], return_hidden_states=True)
    scales = {f"h{i}": h.abs().mean().item() for i, h in enumerate(out.hidden_states)}
    return scales | {"logits": out.logits.abs().mean().item()}


def coord_check(widths: Sequence[int] = WIDTHS, base_width: int = 64, steps: int = 5, lr: float = 1e-2,
                seeds: Sequence[int] = (0,), batch: int = 8, progress: Callable[[str], None] | None = None) -> dict:
    """{"sp": {layer: [scale per width]}, "mup": {...}, and the settings}: scales averaged over `seeds`."""
    result: dict = {"widths": list(widths), "base_width": base_width, "steps": steps, "lr": lr, "seeds": list(seeds),
                    "batch": batch}
    for label, base in (("sp", None), ("mup", base_width)):
        per_layer: dict[str, list[float]] = {}
        for width in widths:
            runs = [activation_scales(width_config(width, base), steps, lr, seed, batch) for seed in seeds]
            for layer in runs[0]:
                per_layer.setdefault(layer, []).append(sum(r[layer] for r in runs) / len(runs))
            if progress:
                progress(f"{label} width {width}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in per_layer.items()))
        result[label] = per_layer
    return result


def plot(result: dict, path: Path) -> None:
    """One panel per parametrization: mean |x| against width, a line per layer, shared log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (label, title) in zip(axes, (("sp", "standard parametrization"), ("mup", "µP"))):
        for layer, scales in result[label].items():
            ax.plot(result["widths"], scales, marker="o", label=layer)
        ax.set(xscale="log", yscale="log", xlabel="width (model.dim)", title=title)
        ax.minorticks_off()
        ax.set_xticks(result["widths"], [str(w) for w in result["widths"]])
    axes[0].set_ylabel(f"mean |x| after {result['steps']} AdamW steps (lr {result['lr']})")
    axes[1].legend(title="h0 embedding, h<l> after block l", fontsize=8, title_fontsize=8)
    fig.suptitle(f"coordinate check: µP base width {result['base_width']}, {len(result['seeds'])} seed(s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def a_width(text: str) -> int:
    """An argparse type: a model width the check can build (heads of HEAD_DIM each)."""
    width = flag(int, above(0))(text)
    if width % HEAD_DIM:
        raise argparse.ArgumentTypeError(f"{width} is not a multiple of the head width {HEAD_DIM} (e.g. 64, 128)")
    return width


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=a_width, nargs="+", default=list(WIDTHS),
                   help=f"model.dim values to compare (multiples of the head width {HEAD_DIM})")
    p.add_argument("--base-width", type=flag(int, above(0)), default=64, help="µP's model.mup.base_width")
    p.add_argument("--steps", type=flag(int, above(0)), default=5, help="AdamW steps before measuring")
    p.add_argument("--lr", type=flag(float, above(0)), default=1e-2, help="peak lr (the base width's, under µP)")
    p.add_argument("--seeds", type=flag(int, above(0)), default=3, help="seeds averaged per width")
    p.add_argument("--out", type=Path, default=Path("docs/figures/coord_check.png"),
                   help="the plot; the numbers go beside it as .json")
    args = p.parse_args(argv)
    result = coord_check(args.widths, args.base_width, args.steps, args.lr, range(args.seeds),
                         progress=lambda line: print(line, flush=True))
    args.out.with_suffix(".json").parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0
