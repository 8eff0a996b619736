"""JREG: hand-computed penalties, finite-difference gradients, and a real `model.Llama` forward."""
from __future__ import annotations

import math

import pytest
import torch

from model import Llama, ModelConfig
from regularizers import LossInputs, RegularizerConfigError
from regularizers.jreg import JReg

E1, E2, E3 = torch.eye(3, dtype=torch.float64)


def inputs_for(states: list[torch.Tensor], final: torch.Tensor | None = None, mask=None) -> LossInputs:
    b, t = states[0].shape[:2]
    tokens = torch.zeros(b, t, dtype=torch.long)
    return LossInputs(
        tokens=tokens, targets=tokens, logits=torch.zeros(b, t, 5), step=0, mask=mask,
        hidden_states=states, final_normed=final,
    )


def tok(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, 1, -1)


# h_0 = e1, h_1 = e1, h_2 = e2, h_3 = -e2  =>  Psi = [0, 0.5, 1] (cosine and angular alike)
STATES = [tok(E1), tok(E1), tok(E2), tok(-E2)]


@pytest.mark.parametrize(
    "params, expected",
    [
        ({}, 1.0),  # final: Psi_3
        ({"variant": "weighted"}, 0 * 1 / 3 + 0.5 * 2 / 3 + 1.0 * 3 / 3),  # linear w_l = l/L
        ({"variant": "weighted", "depth_weights": "uniform"}, 1.5),
        ({"variant": "weighted", "layers": [-1, 2], "depth_weights": [2.0, 3.0]}, 2 * 1.0 + 3 * 0.5),
        ({"layers": [2]}, 0.5),
        ({"variant": "rise"}, (0.5 - 0.0) + (1.0 - 0.5)),  # increments of Psi = [0, 0.5, 1] from layer 2
        ({"variant": "rise", "layers": [-1]}, 0.5),
    ],
)
def test_penalty_values(params: dict, expected: float) -> None:
    loss, metrics = JReg(final_norm="exclude", **params).penalty(inputs_for(STATES))
    assert loss.item() == pytest.approx(expected)
    assert metrics["psi_L"].item() == pytest.approx(1.0)
    assert metrics["zeta_L"].item() == pytest.approx(50.0)  # 100 * (1 - 0.5)


def test_forms_and_final_norm_differ_as_defined() -> None:
    h3 = tok(0.5 * E2 + math.sqrt(3) / 2 * E3)  # 60 degrees from h_2
    states = STATES[:3] + [h3]
    assert JReg(final_norm="exclude").penalty(inputs_for(states))[0].item() == pytest.approx(0.25)
    assert JReg(final_norm="exclude", form="angular").penalty(inputs_for(states))[0].item() == pytest.approx(1 / 3)
    # include: norm(h_L) = -e1 replaces h_3; Psi_3 = d(e2, -e1) = 0.5, so zeta_L = 100 * (0.5 - 0.5) = 0
    loss, metrics = JReg().penalty(inputs_for(states, final=tok(-E1)))
    assert loss.item() == pytest.approx(0.5)
    assert metrics["zeta_L"].item() == pytest.approx(0.0)


@pytest.mark.parametrize("form", ["cosine", "angular"])
@pytest.mark.parametrize("variant", ["final", "weighted", "rise"])
@pytest.mark.parametrize("final_norm", ["include", "exclude"])
def test_gradients_match_finite_differences(form: str, variant: str, final_norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    n_layers, shape = 3, (2, 3, 4)
    tensors = [torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(n_layers + 2)]
    mask = torch.tensor([[True, True, False], [True, False, True]])
    reg = JReg(form=form, variant=variant, final_norm=final_norm)

    def loss(*ts: torch.Tensor) -> torch.Tensor:
        return reg.penalty(inputs_for(list(ts[:-1]), final=ts[-1], mask=mask))[0]

    assert torch.autograd.gradcheck(loss, tensors)


def test_rise_penalizes_only_increments() -> None:
    """A falling profile costs nothing; a jump that moved to L-1 still costs its rise there."""
    h = [tok(E1), tok(E2), tok(E2 + 0.2 * E3), tok(E2 + 0.25 * E3)]  # Psi_1 = 0.5, then small, falling
    falling, _ = JReg(variant="rise", final_norm="exclude").penalty(inputs_for(h))
    moved = [tok(E1), tok(E1), tok(E2), tok(E2)]  # Psi = [0, 0.5, 0]: the jump sits at L-1
    rise, _ = JReg(variant="rise", final_norm="exclude").penalty(inputs_for(moved))
    final, _ = JReg(final_norm="exclude").penalty(inputs_for(moved))
    psi = [float(JReg(final_norm="exclude", layers=[l]).penalty(inputs_for(h))[0]) for l in (1, 2, 3)]
    assert psi[0] > psi[1] > psi[2] and falling.item() == pytest.approx(0.0, abs=1e-12)
    assert rise.item() == pytest.approx(0.5) and final.item() == pytest.approx(0.0)
    with pytest.raises(RegularizerConfigError, match="rise: layers \\[1\\] must be 2..L"):
        JReg(variant="rise", layers=[1], final_norm="exclude").penalty(inputs_for(STATES))


def test_only_needed_layers_are_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    import regularizers.jreg as jreg_module

    calls: list[int] = []
    real = jreg_module.displacement
    monkeypatch.setattr(jreg_module, "displacement", lambda a, *rest: calls.append(1) or real(a, *rest))
    states = [torch.randn(1, 2, 4, requires_grad=True) for _ in range(6)]  # L = 5
    loss, _ = JReg(final_norm="exclude").penalty(inputs_for(states))
    loss.backward()
    assert len(calls) == 2  # Psi_L (penalty) and Psi_{L-1} (zeta_L metric)
    assert all(s.grad is None for s in states[:4])  # Psi_{L-1} was measured without gradient


def test_layer_out_of_range_and_missing_states_fail_clearly() -> None:
    with pytest.raises(RegularizerConfigError, match=r"jreg.layers: \[7\] out of range for a 3-layer"):
        JReg(layers=[7], final_norm="exclude").penalty(inputs_for(STATES))
    with pytest.raises(ValueError, match="return_hidden_states=True"):
        no_states = LossInputs(tokens=torch.zeros(1, 1), targets=torch.zeros(1, 1), logits=torch.zeros(1, 1, 2), step=0)
        JReg().penalty(no_states)


def tiny_llama() -> tuple[Llama, torch.Tensor]:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=3, n_heads=2, n_kv_heads=1, ffn_dim=64, vocab_size=50, max_seq_len=16)
    return Llama(cfg), torch.randint(0, 50, (2, 12))


def llama_inputs(model: Llama, tokens: torch.Tensor) -> LossInputs:
    out = model(tokens, return_hidden_states=True)
    return LossInputs(tokens=tokens, targets=tokens, logits=out.logits, step=0,
                      hidden_states=out.hidden_states, final_normed=out.final_normed)


@pytest.mark.parametrize("final_norm", ["include", "exclude"])
def test_on_llama_the_gradient_reaches_the_embeddings(final_norm: str) -> None:
    model, tokens = tiny_llama()
    loss, metrics = JReg(final_norm=final_norm)(llama_inputs(model, tokens))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.tok_embeddings.weight.grad.abs().sum() > 0
    # only `include` sees the final norm, so only it trains the norm's gains
    assert (model.norm.weight.grad is not None) == (final_norm == "include")
    assert not metrics["psi_L"].requires_grad


def test_on_llama_final_norm_include_and_exclude() -> None:
    model, tokens = tiny_llama()
    penalty = lambda mode: JReg(final_norm=mode).penalty(llama_inputs(model, tokens))[0].item()  # noqa: E731
    # unit gains at init: norm(h_L) is h_L rescaled per token, and cosine ignores scale
    assert penalty("include") == pytest.approx(penalty("exclude"), rel=1e-5)
    with torch.no_grad():
        model.norm.weight.uniform_(0.2, 3.0)  # learned gains rotate norm(h_L) away from h_L
    assert abs(penalty("include") - penalty("exclude")) > 1e-3
