"""Settings of the online trajectory sketch (the `monitors.trajectory` section; settings only, no torch)."""
from __future__ import annotations

from dataclasses import dataclass

from settings.fields import choice, positive
from pretrain.probes.registry import register_monitor

GRANULARITIES = ("component", "layer", "model", "param")


@dataclass
class TrajectoryConfig:
    every: int = 0
    """Sketch the parameters every this many steps (0 disables); also at step 0 and at the last step."""
    dim: int = positive(256)
    """Sketch dimension d: estimated cosines are off by about (1 - cos^2) / sqrt(d) (0.06 at 256 for cos 0)."""
    seed: int = 0
    """Seed of the random projection; a resumed run must keep it (and dim)."""
    granularity: str = choice("component", GRANULARITIES)
    """Groups logged as traj/<group>/...: component (L<i>.q/k/v/o/mlp/norms, embed, final_norm, head) |
    layer | model | param."""


register_monitor("trajectory", TrajectoryConfig, "pretrain.probes.trajectory.online:TrajectorySketch",
                 "Online trajectory sketch: traj/<group>/mds (docs/methods.md §4; pretrain/probes/trajectory/online.py).")
