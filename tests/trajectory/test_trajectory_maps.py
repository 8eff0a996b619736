"""Trajectory maps: values on constructed trajectories, streaming == in-memory, and the group mapping."""
from __future__ import annotations

import math

import pytest
import torch

from model import Llama
from model.config import ModelConfig
from pretrain.probes.trajectory.groups import group_of, group_params, trajectory_names
from pretrain.probes.trajectory.maps import cosine_map, mds, qkv_heterogeneity, trajectory_of
from pretrain.probes.trajectory.stream import stream_trajectory
from storage.weights import save_weights

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=16)


def test_straight_line_has_update_map_of_ones_and_params_below_one():
    g = torch.Generator().manual_seed(0)
    theta0, d = torch.randn(500, generator=g), torch.randn(500, generator=g)
    traj = trajectory_of(list(range(6)), {"w": torch.stack([theta0 + t * d for t in range(6)])})
    u = traj.update_maps()["w"]
    assert torch.allclose(u, torch.ones_like(u), atol=1e-12)
    p = traj.param_maps()["w"]
    assert torch.allclose(p.diagonal(), torch.ones(6, dtype=torch.float64))
    assert p[0, 5] < 0.9  # theta0 and d are nearly orthogonal: the line turns away from theta0
    assert mds(u) == pytest.approx(1.0)


def test_orthogonal_random_steps_have_update_map_near_identity():
    n, t = 20_000, 8
    g = torch.Generator().manual_seed(1)
    steps = torch.randn(t, n, generator=g)
    theta = torch.cat([torch.zeros(1, n), steps.cumsum(0)])
    u = trajectory_of(list(range(t + 1)), {"w": theta}).update_maps()["w"]
    off = u[~torch.eye(t, dtype=torch.bool)]
    # cos of independent Gaussian vectors ~ N(0, 1/n): 5 standard deviations is 0.035
    assert off.abs().max() < 5 / math.sqrt(n)
    assert abs(mds(u)) < 1 / math.sqrt(n) * 2
    # the parameters of a random walk stay correlated: cos(theta_i, theta_j) = sqrt(i/j)
    p = trajectory_of(list(range(t + 1)), {"w": theta}).param_maps()["w"]
    assert p[2, 8].item() == pytest.approx(math.sqrt(2 / 8), abs=0.02)


def test_zero_updates_are_left_out_of_the_update_map_not_nan():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    traj = trajectory_of([0, 10, 20, 30], {"w": x})
    c = traj.update_maps()["w"]
    assert c.shape == (2, 2) and not c.isnan().any() and c[0, 1] == pytest.approx(1.0)
    assert traj.update_steps()["w"] == [10, 20]
    assert traj.summary()["groups"]["w"]["zero_updates"] == [0]
    assert math.isnan(mds(cosine_map(torch.ones(1, 1))))


def test_a_frozen_tail_is_reported_and_an_undefined_mds_is_none():
    """As after the norm-only switch: 'frozen' moves twice then stops, 'norm' moves throughout."""
    g = torch.Generator().manual_seed(0)
    moving = torch.randn(6, 50, generator=g).cumsum(0)
    frozen = torch.cat([moving[:3, :20], moving[2:3, :20].expand(3, 20)])
    once = torch.cat([moving[:2, :5], moving[1:2, :5].expand(4, 5)])
    traj = trajectory_of([0, 1, 2, 3, 4, 5], {"norm": moving, "frozen": frozen, "once": once})
    summary = traj.summary()["groups"]
    assert summary["norm"]["zero_updates"] == [] and summary["frozen"]["zero_updates"] == [2, 3, 4]
    assert traj.update_steps() == {"norm": [0, 1, 2, 3, 4], "frozen": [0, 1], "once": [0]}
    assert summary["frozen"]["mds_updates"] == pytest.approx(mds(traj.update_maps()["frozen"]))
    assert summary["once"]["mds_updates"] is None  # one moving update: no pair to compare
    assert all(not m.isnan().any() for m in (*traj.update_maps().values(), *traj.param_maps().values()))


def test_qkv_heterogeneity_is_the_spread_of_q_k_v_mds():
    h = qkv_heterogeneity({"L0.q": 0.9, "L0.k": 0.5, "L0.v": 0.7, "L0.o": 0.0, "L1.q": 0.3, "L1.k": 0.3,
                           "L1.v": 0.3, "L2.q": 1.0, "embed": 0.0})
    assert h == pytest.approx({0: 0.4, 1: 0.0})  # L2 lacks k and v


@pytest.mark.parametrize("tie", [False, True])
def test_every_llama_parameter_is_in_exactly_one_group(tie):
    cfg = ModelConfig(**{**CFG.__dict__, "tie_embeddings": tie})
    names = trajectory_names(Llama(cfg).state_dict(), tie)
    groups = group_params(names)
    flat = [n for ns in groups.values() for n in ns]
    assert sorted(flat) == sorted(names) and len(set(flat)) == len(flat)
    expected = {f"L{i}.{c}" for i in range(2) for c in ("q", "k", "v", "o", "mlp", "norms")}
    expected |= {"embed", "final_norm"} | (set() if tie else {"head"})
    assert set(groups) == expected
    assert groups["L1.mlp"] == [f"layers.1.feed_forward.w{i}.weight" for i in (1, 2, 3)]
    assert set(group_params(names, "layer")) == {"L0", "L1", "embed", "final_norm"} | (set() if tie else {"head"})
    assert list(group_params(names, "model")) == ["model"]


def test_unknown_parameter_or_granularity_is_refused():
    with pytest.raises(KeyError, match="layers.0.attention.bias"):
        group_of("layers.0.attention.bias")
    with pytest.raises(ValueError, match="granularity"):
        group_of("norm.weight", "block")


def test_streaming_over_checkpoints_equals_in_memory(tmp_path):
    torch.manual_seed(0)
    model, steps, dirs, states = Llama(CFG), [0, 10, 20, 30], [], []
    for s in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p) + 0.005)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        dirs.append(tmp_path / f"w{s}")
        save_weights(dirs[-1], CFG, states[-1])
    streamed = stream_trajectory(list(zip(steps, dirs)), chunk=1000, scratch_dir=tmp_path)
    groups = group_params(trajectory_names(states[0], CFG.tie_embeddings))
    vectors = {g: torch.stack([torch.cat([sd[n].reshape(-1) for n in names]) for sd in states])
               for g, names in groups.items()}
    ref = trajectory_of(steps, vectors)
    assert streamed.steps == steps and streamed.param_grams.keys() == ref.param_grams.keys()
    for g in ref.param_grams:
        torch.testing.assert_close(streamed.param_grams[g], ref.param_grams[g], rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(streamed.update_grams[g], ref.update_grams[g], rtol=1e-12, atol=1e-9)
    got, want = streamed.summary()["groups"], ref.summary()["groups"]
    assert got.keys() == want.keys()
    for g, v in want.items():
        assert got[g]["zero_updates"] == v["zero_updates"] == []
        assert (got[g]["mds_params"], got[g]["mds_updates"]) == pytest.approx((v["mds_params"], v["mds_updates"]), rel=1e-12)
    assert not list(tmp_path.glob("trajectory-*"))  # the scratch is gone


def test_streaming_refuses_a_change_of_shape_naming_the_parameter(tmp_path):
    small = ModelConfig(**{**CFG.__dict__, "n_layers": 1})
    save_weights(tmp_path / "a", CFG, Llama(CFG).state_dict())
    save_weights(tmp_path / "b", small, Llama(small).state_dict())
    with pytest.raises(ValueError, match=r"differ at parameter 'layers\.1\.attention\.wk\.weight'"):
        stream_trajectory([(0, tmp_path / "a"), (1, tmp_path / "b")])


@pytest.mark.numerics
def test_streaming_takes_the_same_parameters_in_any_order(tmp_path):
    """An engine rebuilt over a trainable subset returns the state dict in another order: still one model."""
    torch.manual_seed(0)
    states = [{k: v + 0.01 * i * torch.randn_like(v) for k, v in Llama(CFG).state_dict().items()} for i in range(3)]
    for i, sd in enumerate(states):
        save_weights(tmp_path / f"in_order{i}", CFG, sd)
        save_weights(tmp_path / f"mixed{i}", CFG, dict(reversed(list(sd.items()))) if i else sd)
    ref = stream_trajectory([(i, tmp_path / f"in_order{i}") for i in range(3)])
    mixed = stream_trajectory([(i, tmp_path / f"mixed{i}") for i in range(3)])
    for g in ref.param_grams:
        assert mixed.param_grams[g].equal(ref.param_grams[g]) and mixed.update_grams[g].equal(ref.update_grams[g])
