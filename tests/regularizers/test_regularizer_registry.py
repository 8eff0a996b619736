"""Registry: a user's regularizer builds from config with no framework edit; bad specs name key and choices."""
from __future__ import annotations

import pytest
import torch

import regularizers
from regularizers import LossInputs, Regularizer, RegularizerConfigError, build_regularizers, register
from regularizers import registry
from regularizers.jreg import JReg

JREG_PARAMS = "weight, start_step, warmup_steps, variant, form, final_norm, layers, depth_weights"


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in a test vanish after it."""
    monkeypatch.setattr(registry.REGULARIZERS, "_entries", dict(registry.REGULARIZERS._entries))


def test_builtins_registered_on_import() -> None:
    assert {"jreg", "z_loss"} <= set(regularizers.available())


def test_user_regularizer_builds_from_spec(scratch_registry: None) -> None:
    @register("test_only_mean_logit")
    class MeanLogit(Regularizer):
        factor: float = 1.0

        def penalty(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return self.factor * inputs.logits.mean(), {}

    assert "test_only_mean_logit" in regularizers.available()
    (reg,) = build_regularizers([{"name": "test_only_mean_logit", "weight": 0.5, "factor": 3}])
    assert isinstance(reg, MeanLogit) and reg.factor == 3.0 and isinstance(reg.factor, float)
    tokens = torch.zeros(1, 2, dtype=torch.long)
    loss, _ = reg(LossInputs(tokens=tokens, targets=tokens, logits=torch.ones(1, 2, 4), step=0))
    assert loss.item() == pytest.approx(1.5)  # 0.5 * 3 * mean(ones)


def test_spec_values_are_typed() -> None:
    (reg,) = build_regularizers([{"name": "jreg", "weight": 1, "variant": "weighted", "layers": (-1, 2)}])
    assert isinstance(reg, JReg)
    assert reg.weight == 1.0 and isinstance(reg.weight, float)
    assert reg.layers == [-1, 2] and reg.variant == "weighted"
    assert build_regularizers(None) == []


@pytest.mark.parametrize(
    "spec, key, choices",
    [
        ({"name": "jreg_typo"}, "regularizers[0].name", "registered: jreg, "),
        ({"name": "jreg", "lambda": 1.0}, "regularizers[0].lambda", JREG_PARAMS),
        ({"name": "jreg", "variant": "last"}, "regularizers[0].variant", "one of 'final', 'weighted'"),
        ({"name": "jreg", "layers": "3"}, "regularizers[0].layers", "a list of int or null"),
        ({"name": "jreg", "layers": [1.5]}, "regularizers[0].layers", "a list of int or null"),
        ({"name": "jreg", "weight": True}, "regularizers[0].weight", "expected float"),
        ({"name": "jreg", "weight": -1.0}, "regularizers[0].weight", "must be >= 0"),
        ({"name": "jreg", "depth_weights": "linear"}, "regularizers[0].depth_weights", "variant 'weighted'"),
        ({"weight": 1.0}, "regularizers[0].name", "registered: jreg, "),
    ],
)
def test_bad_spec_names_key_and_choices(spec: dict, key: str, choices: str) -> None:
    with pytest.raises(RegularizerConfigError) as err:
        build_regularizers([spec])
    message = str(err.value)
    assert message.startswith((key + ":", key + "=")) and choices in message, message  # `=`: a field's rule


def test_error_index_points_at_the_entry() -> None:
    with pytest.raises(RegularizerConfigError, match=r"^regularizers\[1\]\.form: expected one of 'cosine', 'angular'"):
        build_regularizers([{"name": "z_loss"}, {"name": "jreg", "form": "euclid"}])
    duplicate = r"^regularizers\[1\]\.name: 'jreg' is already used by regularizers\[0\]"
    with pytest.raises(RegularizerConfigError, match=duplicate):
        build_regularizers([{"name": "jreg"}, {"name": "jreg", "variant": "weighted"}])


def test_required_param_missing(scratch_registry: None) -> None:
    @register("test_only_required")
    class NeedsPower(Regularizer):
        power: float

        def penalty(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return inputs.logits.abs().pow(self.power).mean(), {}

    with pytest.raises(RegularizerConfigError, match=r"^regularizers\[0\]\.power: required parameter missing"):
        build_regularizers([{"name": "test_only_required"}])


def test_register_rejects_bad_classes(scratch_registry: None) -> None:
    with pytest.raises(TypeError, match="subclass of regularizers.Regularizer"):
        register("test_only_not_a_reg")(object)
    with pytest.raises(ValueError, match="already registered by JReg"):
        register("jreg")(type("Other", (JReg,), {}))
    with pytest.raises(TypeError, match="cannot check"):

        @register("test_only_dict_param")
        class DictParam(Regularizer):
            table: dict[str, int] | None = None

            def penalty(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                raise NotImplementedError
