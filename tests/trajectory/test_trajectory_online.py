"""The online sketch: cosines preserved (JL), deterministic, partition-independent, and the callback in-process."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from model import Llama
from model.config import ModelConfig
from pretrain.probes.trajectory.maps import trajectory_of
from pretrain.probes.trajectory.online import SKETCH_FILE, TrajectorySketch, load_sketches, sketch_parameters, sketch_trajectory
from pretrain.probes.trajectory.settings import TrajectoryConfig
from pretrain.probes.trajectory.sketch import count_sketch, param_key

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=16)
D = 256


def test_sketch_preserves_cosines_within_jl_bound():
    # 12 vectors with cosines spread over [0, 1): x_i = a_i u + noise
    n, k = 50_000, 12
    g = torch.Generator().manual_seed(0)
    u = torch.randn(n, generator=g)
    x = torch.stack([a * u + torch.randn(n, generator=g) for a in torch.linspace(0, 3, k)]).double()
    exact = trajectory_of(list(range(k)), {"w": x}).param_maps()["w"]
    s = torch.stack([count_sketch(v, param_key(0, "w"), D) for v in x])
    approx = trajectory_of(list(range(k)), {"w": s}).param_maps()["w"]
    # CountSketch: Var <Sx,Sy> <= (|x|^2|y|^2 + <x,y>^2)/d, so a cosine estimate has sd <= (1 - c^2)/sqrt(d)
    # (delta method) <= 1/16 here. Over 66 pairs, 4.5 sd bounds the worst (two-sided tail 7e-6 per pair).
    err = (approx - exact).abs() / (1 - exact**2).clamp_min(1e-3)
    off = ~torch.eye(k, dtype=torch.bool)
    assert err[off].max() < 4.5 / math.sqrt(D)
    assert err[off].pow(2).mean().sqrt() < 1.5 / math.sqrt(D)  # rms ~1/sqrt(d) when the bound is met
    assert exact[0, -1] < 0.1 and exact[-2, -1] > 0.85  # the test spans the range it claims


@pytest.mark.numerics
def test_sketch_is_a_deterministic_function_of_seed_and_position():
    x = torch.randn(10_000, dtype=torch.float64)
    a = count_sketch(x, param_key(3, "layers.0.attention.wq.weight"), D)
    assert torch.equal(a, count_sketch(x, param_key(3, "layers.0.attention.wq.weight"), D))
    assert not torch.allclose(a, count_sketch(x, param_key(4, "layers.0.attention.wq.weight"), D))
    # a slice sketched at its offset adds up to the whole: what any partition of a parameter would give
    key = param_key(3, "w")
    parts = count_sketch(x[:3001], key, D) + count_sketch(x[3001:], key, D, start=3001)
    torch.testing.assert_close(parts, count_sketch(x, key, D), rtol=0, atol=1e-12)


@pytest.mark.numerics
def test_two_independent_sketchers_agree():
    torch.manual_seed(0)
    a = Llama(CFG)
    b = Llama(CFG)
    b.load_state_dict(a.state_dict())
    sa, sb = sketch_parameters(a, D, seed=7), sketch_parameters(b, D, seed=7)
    assert sa.keys() == sb.keys() == dict(a.named_parameters()).keys()
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    other = sketch_parameters(a, D, seed=8)
    assert not torch.equal(sa["norm.weight"], other["norm.weight"])


def _fake_trainer(model, run_dir, steps):
    return SimpleNamespace(step=0, cfg=SimpleNamespace(train=SimpleNamespace(steps=steps)),
                           engine=SimpleNamespace(module=model), run_dir=run_dir, is_main=True)


def _train(cb, trainer, direction, until, checkpoint_at=()):
    """Move every parameter along a fixed direction one step at a time, calling the hooks as the trainer does."""
    records = []
    while trainer.step < until:
        with torch.no_grad():
            for p, d in zip(trainer.engine.module.parameters(), direction):
                p.add_(d)
        trainer.step += 1
        record = {"step": trainer.step}
        cb.on_step_end(trainer, record)
        records.append(record)
        if trainer.step in checkpoint_at:
            cb.on_checkpoint_saved(trainer, trainer.run_dir)
    return records


@pytest.mark.numerics
def test_online_callback_logs_mds_saves_and_resumes(tmp_path):
    torch.manual_seed(0)
    model = Llama(CFG)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    direction = [0.05 * torch.randn_like(p) for p in model.parameters()]
    cfg = TrajectoryConfig(every=2, dim=D, seed=1)

    cb, trainer = TrajectorySketch(cfg), _fake_trainer(model, tmp_path, steps=11)
    assert cb.state_dict()["steps"] == []
    records = _train(cb, trainer, direction, until=6, checkpoint_at=(6,))
    at_checkpoint = {k: v.clone() for k, v in model.state_dict().items()}
    state_at_checkpoint = cb.state_dict()
    records += _train(cb, trainer, direction, until=11, checkpoint_at=(11,))
    assert [r["step"] for r in records if len(r) > 1][0] == 4  # first MDS once two sketches exist
    last = records[-1]  # step 11 is the last step: sketched although 11 % 2 != 0
    assert cb.steps == [2, 4, 6, 8, 10, 11]
    # a straight line: every sketched update points the same way
    assert last["traj/L0.q/mds_update"] == pytest.approx(1.0, abs=1e-9)
    # the running MDS equals the batch computation over the saved sketches
    saved = load_sketches(tmp_path / SKETCH_FILE)
    summary = sketch_trajectory(saved).summary()["groups"]
    for g, v in summary.items():
        assert last[f"traj/{g}/mds"] == pytest.approx(v["mds_params"], abs=1e-9)
    # ... and approximates the exact parameter MDS within the JL error
    exact = trajectory_of(cb.steps, {"L1.mlp": torch.stack([
        torch.cat([(init[f"layers.1.feed_forward.w{i}.weight"] + s * d).reshape(-1)
                   for i, d in zip((1, 2, 3), [direction[n] for n, (k, _) in enumerate(model.named_parameters())
                                               if k.startswith("layers.1.feed_forward")])])
        for s in cb.steps])}).summary()["groups"]["L1.mlp"]["mds_params"]
    assert last["traj/L1.mlp/mds"] == pytest.approx(exact, abs=4.5 / math.sqrt(D))

    # resume from the checkpoint at step 6 (its state, not sketches.pt, which was last saved at step 11)
    model.load_state_dict(at_checkpoint)
    resumed, trainer = TrajectorySketch(cfg), _fake_trainer(model, tmp_path, steps=11)
    trainer.step = 6
    resumed.load_state_dict(state_at_checkpoint)
    assert resumed.steps == [2, 4, 6]
    again = _train(resumed, trainer, direction, until=11)
    assert resumed.steps == cb.steps
    assert again[-1] == last  # bitwise: same weights, same projection

    with pytest.raises(ValueError, match="seed"):
        TrajectorySketch(TrajectoryConfig(every=2, dim=D, seed=2)).load_state_dict(state_at_checkpoint)
