"""Settings of the jump monitor, the `monitors.jump` section (settings only: the run config imports it)."""
from __future__ import annotations

from dataclasses import dataclass

from settings.fields import choice, positive
from pretrain.probes.registry import register_monitor

FORMS = ("cosine", "angular")
FINAL_NORM = ("include", "exclude")


@dataclass
class JumpMonitorConfig:
    every: int = 50
    """Log jump/psi_<l> and jump/zeta_L every this many steps (0 disables); also at the end. With final_norm
    include, also jump/psi_L_before_norm and jump/zeta_L_before_norm (h_L before the final norm)."""
    form: str = choice("cosine", FORMS)
    """Displacement form: cosine = (1 - cos)/2 | angular = arccos(cos)/pi."""
    final_norm: str = choice("include", FINAL_NORM)
    """include: h_L is taken after the final RMSNorm, as HF's output_hidden_states and the analyses of
    open-weight models (and pretrain/probes/jump/profile.py) do | exclude: the raw residual stream h_L."""
    batches: int = positive(8)
    """Validation micro-batches per rank the profile is averaged over (zeta_L is taken from the mean profile)."""


register_monitor("jump", JumpMonitorConfig, "pretrain.probes.jump.callback:JumpMonitor", "Hidden-state jump profile.")
