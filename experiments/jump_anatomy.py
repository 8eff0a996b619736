"""Where a run's final-layer jump lives, measured on its final checkpoint, arm by arm (docs/methods.md §1, issue 17).

    python scripts/jump_anatomy.py runs/jreg_cpu/runs/* --out runs/jreg_cpu

For each run: the displacement profile on the run's own validation windows (the JumpMonitor's, 8 batches by
default) with h_L taken after the final norm (include) and before it (exclude), on the same checkpoint; the
final norm's gains (mean, and mean abs(g - 1): at init every gain is 1); and how far block L and block L-1 moved
from their initial weights (||W - W0|| / ||W0|| over the block, W0 rebuilt from the run's seed). Read together,
they say whether a penalty on Psi_L changed block L or only rescaled the final norm's gains. Writes
<out>/anatomy.md (mean ± 95% t interval over seeds per arm, arms grouped as experiments/compare.py does) and
<out>/anatomy.json (every run's numbers).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from experiments import runs as cr
from experiments.stats import mean_std, welch
from model import Llama
from pretrain.config import load_config
from pretrain.data import get_batch, prepare_data
from regularizers.jump import displacement_profile, zeta_final
from storage.io import atomic_write_text
from storage.weights import load_weights

METRICS = ("zeta_L include", "zeta_L exclude", "Psi_L include", "Psi_L exclude", "final-norm gain mean",
           "final-norm mean abs(g - 1)", "block L moved", "block L-1 moved")


def relative_change(model: Llama, init: Llama, layer: int) -> float:
    """||W - W0|| / ||W0|| over every parameter of block `layer` (0-based)."""
    now, start = (torch.cat([p.detach().flatten() for p in m.layers[layer].parameters()]) for m in (model, init))
    return float((now - start).norm() / start.norm())


def anatomy(run_dir: Path, batches: int, ranks: int = 2) -> dict[str, float]:
    """The run's numbers on its final checkpoint (see the module docstring)."""
    cfg = load_config(run_dir / "config.yaml")
    model_cfg, state = load_weights(run_dir / "checkpoints")
    model = Llama(model_cfg).eval()
    model.load_state_dict(dict(state))
    torch.manual_seed(cfg.run.seed)  # the trainer's init: same seed, same construction order
    init = Llama(model_cfg)
    val = prepare_data(cfg.data, model_cfg.vocab_size).val
    micro = cfg.train.micro_batch_size
    profiles: dict[str, list[torch.Tensor]] = {"include": [], "exclude": []}
    with torch.no_grad():
        for b in range(batches * ranks):  # the monitor's windows: every rank's batches, in order
            tokens = get_batch(val, (torch.arange(b * micro, (b + 1) * micro) % len(val)).numpy())
            out = model(tokens[:, :-1], return_hidden_states=True)
            profiles["include"].append(displacement_profile(out.hidden_states, final=out.final_normed))
            profiles["exclude"].append(displacement_profile(out.hidden_states))
    row: dict[str, float] = {}
    for view, ps in profiles.items():
        mean = torch.stack(ps).mean(dim=0)
        row[f"zeta_L {view}"], row[f"Psi_L {view}"] = float(zeta_final(mean)), float(mean[-1])
    gains = model.norm.weight.detach()
    row["final-norm gain mean"], row["final-norm mean abs(g - 1)"] = float(gains.mean()), float((gains - 1).abs().mean())
    row["block L moved"] = relative_change(model, init, model_cfg.n_layers - 1)
    row["block L-1 moved"] = relative_change(model, init, model_cfg.n_layers - 2)
    return row


def render(arms: dict[str, list[cr.Run]], rows: dict[str, dict[str, float]], baseline: Optional[str]) -> str:
    lines = ["# Jump anatomy on the final checkpoints", "",
             "Mean ± half-width of the 95% t interval over seeds. include/exclude: h_L after/before the final norm, "
             "on the same checkpoint and windows. moved: ||W - W0|| / ||W0|| of the block.", "",
             "| arm | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    values = {label: {m: [rows[str(r.path)][m] for r in runs] for m in METRICS} for label, runs in arms.items()}
    for label in arms:
        lines.append(f"| {label} | " + " | ".join(cr.fmt(mean_std(values[label][m])) for m in METRICS) + " |")
    if baseline in arms:
        lines += ["", f"## Against {baseline}", "", "| arm | " + " | ".join(METRICS) + " |",
                  "|---" * (len(METRICS) + 1) + "|"]
        for label in arms:
            if label != baseline:
                cells = [cr.fmt_diff(welch(values[label][m], values[baseline][m])) for m in METRICS]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories with a final checkpoint")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batches", type=int, default=8, help="validation micro-batches per rank (the monitor's)")
    p.add_argument("--baseline", default="baseline", help="the arm differences are taken against")
    args = p.parse_args(argv)
    arms = cr.group_runs(cr.load_run(d) for d in args.runs)
    rows = {str(r.path): anatomy(r.path, args.batches) for runs in arms.values() for r in runs}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "anatomy.json", json.dumps(rows, indent=1))
    atomic_write_text(args.out / "anatomy.md", render(arms, rows, args.baseline))
    print((args.out / "anatomy.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
