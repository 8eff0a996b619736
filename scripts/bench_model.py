"""CPU micro-benchmark: forward+backward of growlm's Llama vs transformers' LlamaForCausalLM, same weights.

Repetitions alternate between the two models (A B, B A, ...) in one process, so machine noise lands on both;
the median of --steps timed repetitions after --warmup is reported, in fp32 and under bf16 autocast.

    python scripts/bench_model.py --preset tiny --batch 8 --seq 256 --steps 20
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import yaml
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import Llama, ModelConfig  # noqa: E402
from model.hf import to_hf_config, to_hf_state_dict  # noqa: E402

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "model"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", help="model preset name under configs/model/")
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: the preset's max_seq_len)")
    p.add_argument("--steps", type=int, default=20, help="timed repetitions per model and precision")
    p.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's); 1 is steadier on a machine others share")
    return p.parse_args()


def train_step(forward: Callable[[torch.Tensor], torch.Tensor], params: list[torch.nn.Parameter],
               tokens: torch.Tensor, autocast: bool) -> float:
    """Seconds for one forward + next-token loss + backward."""
    for p in params:
        p.grad = None
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
        logits = forward(tokens[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    loss.backward()
    return time.perf_counter() - start


def bench(cfg: ModelConfig, batch: int, seq: int, steps: int, warmup: int, autocast: bool) -> dict[str, float]:
    """Median seconds per step for each model, repetitions interleaved in alternating order."""
    torch.manual_seed(0)
    ours = Llama(cfg).train()
    hf = LlamaForCausalLM._from_config(to_hf_config(cfg), attn_implementation="sdpa").train()
    assert hf.config._attn_implementation == "sdpa"
    hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=True)
    runners = {
        "growlm": (lambda x: ours(x).logits, list(ours.parameters())),
        "hf": (lambda x: hf(input_ids=x, use_cache=False).logits, list(hf.parameters())),
    }
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for rep in range(warmup + steps):
        order = list(runners) if rep % 2 == 0 else list(reversed(runners))
        for name in order:
            seconds = train_step(*runners[name], tokens, autocast)
            if rep >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig(**yaml.safe_load((PRESETS / f"{args.preset}.yaml").read_text()))
    seq = args.seq or cfg.max_seq_len
    print(f"preset={args.preset} params={cfg.num_params():,} batch={args.batch} seq={seq} steps={args.steps} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'precision':<10} {'growlm tok/s':>13} {'hf tok/s':>10} {'ours/hf':>8}")
    for precision, autocast in (("fp32", False), ("bf16", True)):
        med = bench(cfg, args.batch, seq, args.steps, args.warmup, autocast)
        tok = args.batch * seq
        print(f"{precision:<10} {tok / med['growlm']:>13,.0f} {tok / med['hf']:>10,.0f} "
              f"{med['hf'] / med['growlm']:>8.3f}")


if __name__ == "__main__":
    main()
