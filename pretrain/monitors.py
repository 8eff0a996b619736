"""In-training monitors (callbacks built from the `monitors:` config section).

JumpMonitor logs the per-layer displacement profile Psi_1..Psi_L and the jump strength zeta_L (METHODS.md §1)
averaged over fixed validation batches (the windows Validation uses, the same at every step), for every run,
so JREG and baseline runs are compared on the same curves and the curves are not one micro-batch's noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pretrain import dist
from pretrain.callbacks import Callback, due
from pretrain.trajectory.online import TrajectoryConfig, TrajectorySketch
from regularizers.jump import displacement_profile, zeta_final

if TYPE_CHECKING:
    from pretrain.trainer import Trainer


@dataclass
class JumpMonitorConfig:
    every: int = 50
    """Log jump/psi_<l> and jump/zeta_L every this many steps (0 disables); also at the end."""
    form: str = "cosine"
    """Displacement form: cosine = (1 - cos)/2 | angular = arccos(cos)/pi."""
    final_norm: str = "include"
    """include: h_L is taken after the final RMSNorm, as HF's output_hidden_states and the analyses of
    open-weight models (and scripts/jump_profile.py) do | exclude: the raw residual stream h_L."""
    batches: int = 8
    """Validation micro-batches per rank the profile is averaged over (zeta_L is taken from the mean profile)."""


@dataclass
class MonitorsConfig:
    jump: JumpMonitorConfig = field(default_factory=JumpMonitorConfig)
    """Hidden-state jump profile."""
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    """Online trajectory sketch: traj/<group>/mds (METHODS.md §4; pretrain/trajectory/online.py)."""


class JumpMonitor(Callback):
    def __init__(self, cfg: JumpMonitorConfig):
        self.cfg = cfg

    def on_step_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        if due(trainer.step, self.cfg.every, trainer.cfg.train.steps):
            record.update(self.measure(trainer))

    def measure(self, trainer: "Trainer") -> dict[str, float]:
        micro, world, rank = trainer.cfg.train.micro_batch_size, dist.world_size(), dist.rank()
        profiles = []
        trainer.engine.eval()
        with torch.no_grad():
            for b in range(self.cfg.batches):  # Validation's windows: batch b of rank r starts at (b*world + r)*micro
                indices = (np.arange(micro) + (b * world + rank) * micro) % len(trainer.data.val)
                inputs, _ = trainer.batch(indices, trainer.data.val)
                out = trainer.engine(inputs, return_hidden_states=True)
                final = out.final_normed if self.cfg.final_norm == "include" else None
                profiles.append(displacement_profile(out.hidden_states, form=self.cfg.form, final=final))
        trainer.engine.train()
        profile = dist.all_reduce_mean(torch.stack(profiles).mean(dim=0))
        metrics = {f"jump/psi_{l}": v for l, v in enumerate(profile.tolist(), start=1)}
        metrics["jump/zeta_L"] = zeta_final(profile).item() if len(profile) > 1 else 0.0
        return metrics


def build_monitors(cfg: MonitorsConfig) -> list[Callback]:
    monitors: list[Callback] = [JumpMonitor(cfg.jump)] if cfg.jump.every > 0 else []
    if cfg.trajectory.every > 0:
        monitors.append(TrajectorySketch(cfg.trajectory))
    return monitors
