"""Live trajectory maps: a small random sketch of every parameter every N steps, instead of checkpoints.

Each parameter's fp32 value is sketched (sketch.py: seeded, d numbers per parameter, nothing of parameter
size kept); a group's sketch is the sum of its parameters'. The run-long MDS of each group's parameter and
update trajectory is kept up to date in O(T d) per sketch and logged as traj/<group>/mds and
traj/<group>/mds_update. The per-parameter sketches (T x d each) go to <run>/jobs/trajectory/sketches.pt at
every checkpoint for scripts/trajectory_report.py --from-sketches; the checkpoint carries them too (state_dict),
so a resumed run continues them.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pretrain.callbacks import Callback, due
from pretrain.probes.trajectory.groups import group_params
from pretrain.probes.trajectory.maps import Trajectory, trajectory_of
from pretrain.probes.trajectory.settings import TrajectoryConfig
from pretrain.probes.trajectory.sketch import count_sketch, param_key
from storage.io import atomic_write_bytes

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

SKETCH_FILE = Path("jobs") / "trajectory" / "sketches.pt"


class RunningMDS:
    """MDS of a growing sequence of vectors, O(T d) per vector; equals maps.mds(cosine_map(gram))."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []
        self.total, self.count = 0.0, 0

    def add(self, v: torch.Tensor) -> None:
        if self.rows and v.norm() > 0:
            prev = torch.stack(self.rows)
            norms = prev.norm(dim=1)
            ok = norms > 0
            cos = (prev[ok] @ v / (norms[ok] * v.norm())).clamp(-1.0, 1.0)
            self.total += cos.sum().item()
            self.count += int(ok.sum())
        self.rows.append(v)

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else math.nan


class TrajectorySketch(Callback):
    """Sketches every parameter on all ranks (collective under ZeRO); rank 0 saves them."""

    def __init__(self, cfg: TrajectoryConfig):
        self.cfg = cfg
        self._reset()

    def _reset(self) -> None:
        self.steps: list[int] = []
        self.sketches: dict[str, list[torch.Tensor]] = {}
        self._params: dict[str, RunningMDS] = {}
        self._updates: dict[str, RunningMDS] = {}

    # ---- hooks -----------------------------------------------------------------------------------------
    def on_step_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        step = trainer.step
        if not due(step, self.cfg.every, trainer.cfg.train.steps) or (self.steps and self.steps[-1] >= step):
            return
        self._add(step, sketch_parameters(trainer.engine.module, self.cfg.dim, self.cfg.seed))
        record.update(self.metrics())

    def on_checkpoint_saved(self, trainer: "Trainer", path: Path) -> None:
        if trainer.is_main and self.steps:
            self.save(trainer.run_dir / SKETCH_FILE)

    # ---- state -----------------------------------------------------------------------------------------
    def _add(self, step: int, sketches: dict[str, torch.Tensor]) -> None:
        if self.sketches and sketches.keys() != self.sketches.keys():
            raise ValueError(f"step {step}: the model's parameters changed since step {self.steps[0]}")
        for name, s in sketches.items():
            self.sketches.setdefault(name, []).append(s)
        for g, names in group_params(sketches, self.cfg.granularity).items():
            v = torch.stack([sketches[n] for n in names]).sum(0)
            params, updates = self._params.setdefault(g, RunningMDS()), self._updates.setdefault(g, RunningMDS())
            if params.rows:
                updates.add(v - params.rows[-1])
            params.add(v)
        self.steps.append(step)

    def metrics(self) -> dict[str, float]:
        """traj/<group>/mds and traj/<group>/mds_update over all sketches so far (those defined yet)."""
        out = {}
        for g in self._params:
            for key, running in (("mds", self._params[g]), ("mds_update", self._updates[g])):
                if running.count:
                    out[f"traj/{g}/{key}"] = running.value
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "dim": self.cfg.dim, "seed": self.cfg.seed, "steps": list(self.steps),
                "sketches": {n: torch.stack(s) for n, s in self.sketches.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The sketches up to the checkpoint a run resumes from (later ones are sketched anew)."""
        if (state["dim"], state["seed"]) != (self.cfg.dim, self.cfg.seed):
            raise ValueError(f"the checkpoint's trajectory sketch has dim={state['dim']}, seed={state['seed']}, "
                             f"but monitors.trajectory has dim={self.cfg.dim}, seed={self.cfg.seed}; keep them "
                             "or set monitors.trajectory.every=0")
        self._reset()  # a rollback replaces what was sketched past the checkpoint
        for t, step in enumerate(state["steps"]):
            self._add(step, {n: s[t] for n, s in state["sketches"].items()})

    def save(self, path: Path) -> None:
        """The sketches so far as a file scripts/trajectory_report.py --from-sketches reads."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())


def load_sketches(path: Path) -> dict[str, Any]:
    """{dim, seed, steps, sketches: {parameter: [T, dim]}} as TrajectorySketch saved them."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != 1:
        raise ValueError(f"{path}: unknown sketch file version {state.get('version')!r}")
    return state


def sketch_trajectory(saved: dict[str, Any], granularity: str = "component", start: int = 0) -> Trajectory:
    """The (approximate) trajectory of the sketched steps >= start, grouped at `granularity`."""
    keep = [t for t, s in enumerate(saved["steps"]) if s >= start]
    sk = saved["sketches"]
    vectors = {g: sum(sk[n][keep] for n in names) for g, names in group_params(sk, granularity).items()}
    return trajectory_of([saved["steps"][t] for t in keep], vectors)


def sketch_parameters(module: torch.nn.Module, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Parameter name -> float64 CPU sketch of its fp32 value. Collective under ZeRO: every rank calls it."""
    return {name: count_sketch(full_fp32(p).reshape(-1), param_key(seed, name), dim).cpu()
            for name, p in module.named_parameters()}


def full_fp32(p: torch.nn.Parameter) -> torch.Tensor:
    """The whole parameter in fp32 on this rank: the optimizer's fp32 master where ZeRO keeps one (gathered
    from its partitions; all ranks must call this in the same order), else the module's own tensor."""
    if p.requires_grad and (hasattr(p, "ds_id") or hasattr(p, "get_full_hp_param")):
        from deepspeed.utils import safe_get_full_fp32_param

        full = safe_get_full_fp32_param(p)
        if full is not None:
            return full
    if hasattr(p, "ds_id"):  # a frozen ZeRO-3 parameter: gather the module's partitions
        from deepspeed.zero import GatheredParameters

        with GatheredParameters([p], modifier_rank=None):
            return p.detach().float().clone()
    return p.detach().float()
