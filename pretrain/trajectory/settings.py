"""Settings of the online trajectory sketch (the `monitors.trajectory` section; settings only, no torch)."""
from __future__ import annotations

from dataclasses import dataclass

GRANULARITIES = ("component", "layer", "model", "param")


@dataclass
class TrajectoryConfig:
    every: int = 0
    """Sketch the parameters every this many steps (0 disables); also at step 0 and at the last step."""
    dim: int = 256
    """Sketch dimension d: estimated cosines are off by about (1 - cos^2) / sqrt(d) (0.06 at 256 for cos 0)."""
    seed: int = 0
    """Seed of the random projection; a resumed run must keep it (and dim)."""
    granularity: str = "component"
    """Groups logged as traj/<group>/...: component (L<i>.q/k/v/o/mlp/norms, embed, final_norm, head) |
    layer | model | param."""

    def check(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r} is not valid; choose one of {list(GRANULARITIES)}")
        if self.dim <= 0:
            raise ValueError(f"dim={self.dim} must be > 0")
