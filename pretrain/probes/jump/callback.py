"""The jump monitor: the per-layer displacement profile Psi_1..Psi_L and the jump strength zeta_L (docs/methods.md §1)
averaged over fixed validation batches (the windows Validation uses, the same at every step), for every run,
so JREG and baseline runs are compared on the same curves and the curves are not one micro-batch's noise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pretrain import dist
from pretrain.callbacks import Callback, due
from pretrain.probes.jump.settings import JumpMonitorConfig
from regularizers.jump import displacement_profile, zeta_final

if TYPE_CHECKING:
    from pretrain.trainer import Trainer


class JumpMonitor(Callback):
    def __init__(self, cfg: JumpMonitorConfig):
        self.cfg = cfg

    def on_step_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        if due(trainer.step, self.cfg.every, trainer.cfg.train.steps):
            record.update(self.measure(trainer))

    def measure(self, trainer: "Trainer") -> dict[str, float]:
        micro, world, rank = trainer.cfg.train.micro_batch_size, dist.world_size(), dist.rank()
        profiles, before_norm = [], []
        trainer.engine.eval()
        with torch.no_grad():
            for b in range(self.cfg.batches):  # Validation's windows: batch b of rank r starts at (b*world + r)*micro
                indices = (np.arange(micro) + (b * world + rank) * micro) % len(trainer.data.val)
                inputs, _ = trainer.batch(indices, trainer.data.val)
                out = trainer.engine(inputs, return_hidden_states=True)
                final = out.final_normed if self.cfg.final_norm == "include" else None
                profiles.append(displacement_profile(out.hidden_states, form=self.cfg.form, final=final))
                if final is not None:  # the raw residual stream as well: how much of the jump is the norm's
                    before_norm.append(displacement_profile(out.hidden_states, form=self.cfg.form))
        trainer.engine.train()
        profile = dist.all_reduce_mean(torch.stack(profiles).mean(dim=0))
        metrics = {f"jump/psi_{l}": v for l, v in enumerate(profile.tolist(), start=1)}
        metrics["jump/zeta_L"] = zeta_final(profile).item() if len(profile) > 1 else 0.0
        if before_norm:
            raw = dist.all_reduce_mean(torch.stack(before_norm).mean(dim=0))
            metrics["jump/psi_L_before_norm"] = raw[-1].item()
            metrics["jump/zeta_L_before_norm"] = zeta_final(raw).item() if len(raw) > 1 else 0.0
        return metrics
