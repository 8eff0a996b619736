"""Issue 34's trajectory specs say what they claim: the SGD grid makes one claim per trajectory group its model
logs (a misspelt group would be a claim without data, silently "not shown"), and the late-t0 sweep's t0s are
the declared fractions of the run, each a validation step, with every subset arm held to full training by TOST."""
from __future__ import annotations

from pathlib import Path

from experiments import arms as rx
from pretrain.config import load_config
from pretrain.engine import build_model
from pretrain.probes.trajectory.groups import group_params, trajectory_names

SPECS = rx.ROOT / "configs" / "experiments"


def configs(spec: rx.Spec, tmp_path: Path) -> dict:
    """arm -> the resolved config of its first seed's run."""
    return {job.arm: load_config(spec.base, job.overrides) for job in rx.plan(spec, tmp_path, seeds=spec.seeds[:1])}


def test_the_sgd_grid_claims_lower_mds_in_every_logged_group_for_every_arm(tmp_path: Path) -> None:
    spec = rx.load_spec(SPECS / "trajectory_sgd.yaml")
    cfgs = configs(spec, tmp_path)
    assert {a: (c.train.optimizer, c.train.momentum, c.train.weight_decay > 0) for a, c in cfgs.items()} == {
        "baseline": ("sgd", 0.0, False), "momentum": ("sgd", 0.9, False),
        "weight_decay": ("sgd", 0.0, True), "momentum_weight_decay": ("sgd", 0.9, True)}
    cfg = cfgs["baseline"]
    assert cfg.monitors.trajectory.granularity == "component" and cfg.monitors.trajectory.every > 0
    names = trajectory_names([n for n, _ in build_model(cfg).named_parameters()], cfg.model.tie_embeddings)
    logged = {f"traj/{g}/mds" for g in group_params(names, "component")}
    protocol = spec.protocol
    assert protocol is not None and protocol.baseline == "baseline" and len(spec.seeds) >= 3
    assert {o.metric for o in protocol.primary} == logged
    assert all(o.predicts == "lower" and set(o.arms) == set(cfgs) - {"baseline"} for o in protocol.primary)


def test_the_late_t0_sweep_holds_every_subset_arm_to_full_training(tmp_path: Path) -> None:
    spec = rx.load_spec(SPECS / "norms_only_long.yaml")
    cfgs = configs(spec, tmp_path)
    steps = cfgs["full"].train.steps
    subsets = {a: (c.train.trainable.mode, c.train.trainable.after_step / steps)
               for a, c in cfgs.items() if a != "full"}
    assert sorted(subsets.values()) == sorted((m, f) for m in ("norms_only", "random") for f in (0.5, 0.75, 0.9))
    assert all(c.train.trainable.after_step % c.eval.every == 0 for c in cfgs.values())  # stop at t0 is read there
    protocol = spec.protocol
    assert protocol is not None and protocol.baseline == "full" and len(spec.seeds) >= 3
    (claim,) = protocol.equivalence
    assert claim.metric == "val/loss" and claim.margin == 0.02 and claim.paired and set(claim.arms) == set(subsets)
    assert not protocol.directional
