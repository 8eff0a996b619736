"""Settings of the built-in monitors that live in this package (settings only: the run config imports it)."""
from __future__ import annotations

from dataclasses import dataclass

FORMS = ("cosine", "angular")
FINAL_NORM = ("include", "exclude")


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

    def check(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form={self.form!r} is not valid; choose one of {list(FORMS)}")
        if self.final_norm not in FINAL_NORM:
            raise ValueError(f"final_norm={self.final_norm!r} is not valid; choose one of {list(FINAL_NORM)}")
        if self.batches <= 0:
            raise ValueError(f"batches={self.batches} must be > 0")
