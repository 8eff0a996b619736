"""Probes: what looks inside a run, each a package here that registers itself in its `settings` module.

In-training monitors (`monitors.<name>`): jump (the per-layer displacement profile and zeta_L) and trajectory
(directional structure of the optimization path). Jobs on saved checkpoints (`jobs.<name>`): peeling (per-layer
achievable losses) and lm_eval (downstream tasks). A job reads a checkpoint from disk and writes
`<run>/jobs/<job>/step_<N>/`; it never touches the live engine or writes into a checkpoint, so it runs beside
training (a detached process, `detached`) or after it (`python -m pretrain.probes.<job>`).

Shared modules: registry (the `jobs:`/`monitors:` registries), schedule (the `every`/`mode` settings), cli
(settings dataclass <-> flags), location (where a job reads and writes), detached (the job base every job's
callback subclasses). Importing this package imports every probe's settings (no torch), so a new built-in probe
is one new package with a `settings` module.
"""
from __future__ import annotations

import importlib
import pkgutil

from pretrain.probes.registry import JOBS, MONITORS

for _probe in pkgutil.iter_modules(__path__):
    if _probe.ispkg:
        importlib.import_module(f"{__name__}.{_probe.name}.settings")

__all__ = ["JOBS", "MONITORS"]
