"""The trainable subsets of the hybrid mode, in process: norm-only and its random-elements control."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model import Llama
from model.config import ModelConfig
from pretrain.config import ConfigError, TrainableConfig, load_config
from pretrain.hybrid import NORM, mask_gradients, mask_moments, random_masks, subset_of

SHAPE = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=16)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    return Llama(SHAPE)


def norm_count(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if NORM.search(n))


def test_random_subset_is_as_large_as_the_norms_and_outside_them(llama):
    subset = subset_of(llama, TrainableConfig(mode="random"), seed=3)
    norms = {n for n, _ in llama.named_parameters() if NORM.search(n)}
    assert norms and not norms & subset.names
    assert subset.names == {n for n, _ in llama.named_parameters()} - norms
    weights = dict(llama.named_parameters())
    assert subset.size(weights) == norm_count(llama) == 5 * SHAPE.dim
    for name, mask in subset.masks.items():
        assert mask.dtype == torch.bool and mask.shape == weights[name].shape
    assert sum(int(m.any()) for m in subset.masks.values()) > 1  # spread over tensors, not one block


def test_norms_only_subset_is_the_norm_gains(llama):
    subset = subset_of(llama, TrainableConfig(mode="norms_only"), seed=3)
    assert subset.masks == {} and all(NORM.search(n) for n in subset.names)
    assert subset.size(dict(llama.named_parameters())) == norm_count(llama)


def test_random_masks_are_seeded(llama):
    a, b, c = (random_masks(llama, 100, set(), seed) for seed in (0, 0, 1))
    assert all(a[n].equal(b[n]) for n in a)
    assert not all(a[n].equal(c[n]) for n in a)
    assert sum(int(m.sum()) for m in a.values()) == 100


def test_random_masks_refuse_more_than_there_is():
    model = nn.Linear(3, 2, bias=False)
    with pytest.raises(ValueError, match="cannot draw 7 of the 6 elements"):
        random_masks(model, 7, set(), 0)
    assert sum(int(m.sum()) for m in random_masks(model, 6, set(), 0).values()) == 6  # all of them


@pytest.mark.numerics
def test_masked_gradient_is_the_gradient_inside_the_mask_and_zero_outside():
    torch.manual_seed(0)
    model, twin = nn.Linear(5, 4), nn.Linear(5, 4)
    twin.load_state_dict(model.state_dict())
    masks = random_masks(model, 6, set(), seed=0)
    mask_gradients(model, masks)
    x = torch.randn(8, 5)
    model(x).square().sum().backward()
    twin(x).square().sum().backward()
    assert any(twin.weight.grad[masks["weight"]] != 0)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert p.grad[masks[name]].equal(q.grad[masks[name]])
        assert (p.grad[~masks[name]] == 0).all()


def test_carried_moments_are_zeroed_outside_the_mask():
    masks = {"w": torch.tensor([True, False, True])}
    moments = {"w": {"exp_avg": torch.ones(3), "exp_avg_sq": torch.full((3,), 2.0)}, "b": {"exp_avg": torch.ones(2)}}
    masked, step = mask_moments((moments, 7), masks)
    assert step == 7
    assert masked["w"]["exp_avg"].tolist() == [1, 0, 1] and masked["w"]["exp_avg_sq"].tolist() == [2, 0, 2]
    assert masked["b"]["exp_avg"].tolist() == [1, 1]


def test_random_mode_is_refused_under_zero3():
    with pytest.raises(ConfigError, match="zero_stage 0, 1 or 2"):
        load_config("configs/tiny.yaml", ["train.trainable.mode=random", "deepspeed.zero_stage=3"])
