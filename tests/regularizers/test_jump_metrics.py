"""Psi and zeta on hidden states whose angles are known by construction (docs/methods.md §1 definitions)."""
from __future__ import annotations

import math

import pytest
import torch

from regularizers import displacement, displacement_profile, jump_rate, zeta_final
from regularizers.jump import cosine as jump_cosine

E1 = torch.tensor([1.0, 0.0, 0.0])
E2 = torch.tensor([0.0, 1.0, 0.0])


def tok(*vectors: torch.Tensor) -> torch.Tensor:
    """[1, T, D] hidden state from per-token vectors."""
    return torch.stack(vectors).unsqueeze(0)


@pytest.mark.parametrize(
    "h_next, cosine, angular",
    [
        (3.0 * E1, 0.0, 0.0),  # same direction (scale must not matter)
        (E2, 0.5, 0.5),  # orthogonal: (1 - 0)/2 and (pi/2)/pi
        (-2.0 * E1, 1.0, 1.0),  # opposite: (1 + 1)/2 and pi/pi
        (0.5 * E1 + math.sqrt(3) / 2 * E2, 0.25, 1 / 3),  # 60 degrees: (1 - 1/2)/2 and (pi/3)/pi
    ],
)
def test_displacement_values(h_next: torch.Tensor, cosine: float, angular: float) -> None:
    h_prev, h_next = tok(E1), tok(h_next)
    assert displacement(h_prev, h_next, form="cosine").item() == pytest.approx(cosine, abs=1e-6)
    assert displacement(h_prev, h_next, form="angular").item() == pytest.approx(angular, abs=1e-6)


def test_angular_gradient_is_finite_where_arccos_is_not_differentiable() -> None:
    for h_next in (E1, -E1):  # cos = +1 and -1 exactly
        h_prev = tok(E1 + 0.0).requires_grad_()
        value = displacement(h_prev, tok(h_next), form="angular")
        value.backward()
        assert torch.isfinite(h_prev.grad).all()
        assert value.item() == pytest.approx(0.0 if h_next is E1 else 1.0, abs=1e-7)  # the value stays exact


@pytest.mark.numerics
def test_padding_is_excluded() -> None:
    h_prev = tok(E1, E1, E1)
    h_next = tok(E1, E2, -E1)  # per token: 0, 0.5, 1
    mask = torch.tensor([[True, True, False]])
    assert displacement(h_prev, h_next, mask).item() == pytest.approx(0.25)  # (0 + 0.5) / 2
    assert displacement(h_prev, h_next).item() == pytest.approx(0.5)  # (0 + 0.5 + 1) / 3

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    mask = torch.rand(2, 5, generator=g) > 0.4
    b_changed = torch.where(mask[..., None], b, torch.randn(2, 5, 8, generator=g))
    assert torch.equal(displacement(a, b, mask), displacement(a, b_changed, mask))
    assert not torch.allclose(displacement(a, b), displacement(a, b_changed))


def test_profile_and_final_replacement() -> None:
    states = [tok(E1), tok(E1), tok(E2), tok(-E2)]  # Psi = 0, 0.5, 1
    assert displacement_profile(states).tolist() == pytest.approx([0.0, 0.5, 1.0])
    # final replaces h_L only: Psi_3 = d(E2, E1) = 0.5
    assert displacement_profile(states, final=tok(E1)).tolist() == pytest.approx([0.0, 0.5, 0.5])


def test_bf16_states_are_measured_in_fp32() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 4, 64, generator=g).bfloat16(), torch.randn(2, 4, 64, generator=g).bfloat16()
    got = displacement(a, b)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(displacement(a.float(), b.float()).item(), abs=1e-6)


def test_jump_rates_from_known_profiles() -> None:
    # zeta_L = 100 * max(0, 0.3 - 0.05) = 25
    assert zeta_final(torch.tensor([0.1, 0.05, 0.3])).item() == pytest.approx(25.0)
    profile = torch.tensor([0.1, 0.2, 0.15, 0.3])
    assert jump_rate(profile, 2).item() == pytest.approx(25.0)  # 100 * (0.1 + 0 + 0.15)
    assert jump_rate(profile, 3).item() == pytest.approx(15.0)  # 100 * (0 + 0.15)
    assert zeta_final(torch.tensor([0.3, 0.2, 0.1])).item() == 0.0  # falling profile: no jump
    with pytest.raises(ValueError, match="Psi_0"):
        jump_rate(profile, 1)


def test_cosine_matches_torch_cosine_similarity_in_value_and_gradient() -> None:
    """The lean cosine must be F.cosine_similarity's function, zero vectors (the eps clamp) included."""
    torch.manual_seed(0)
    a = torch.randn(3, 5, 16, dtype=torch.float64)
    b = torch.randn(3, 5, 16, dtype=torch.float64)
    b[0, 0] = 0.0  # a zero vector: the norms' product is clamped, cos = 0
    b[1, 2] = 3.0 * a[1, 2]  # parallel: cos = 1
    weights = torch.linspace(-1, 1, 15, dtype=torch.float64).view(3, 5)

    def value_and_grads(cos_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        cos = cos_fn(x, y)
        (cos * weights).sum().backward()
        return cos.detach(), x.grad, y.grad

    ours = value_and_grads(jump_cosine)
    torch_ = value_and_grads(lambda x, y: torch.nn.functional.cosine_similarity(x, y, dim=-1))
    torch.testing.assert_close(ours[0], torch_[0], rtol=1e-12, atol=1e-12)
    regular = torch.ones(3, 5, dtype=torch.bool)
    regular[0, 0] = False  # cos is flat at 0 there; the gradient at a zero vector is a convention
    for got, want in zip(ours[1:], torch_[1:]):
        torch.testing.assert_close(got[regular], want[regular], rtol=1e-10, atol=1e-12)
    assert ours[0][0, 0] == 0 and abs(ours[0][1, 2] - 1) < 1e-12
