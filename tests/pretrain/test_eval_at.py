"""eval.at: validation at exactly the listed steps (LAG's choosing steps and its horizon), refused when negative."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from pretrain.callbacks import Validation, build_callbacks
from pretrain.config import ConfigError, load_config


def validated_steps(callback: Validation, last: int) -> list[int]:
    trainer = SimpleNamespace(step=0, cfg=SimpleNamespace(train=SimpleNamespace(steps=last)))
    callback.evaluate = lambda trainer: 1.0
    seen = []
    for step in range(last + 1):
        trainer.step, record = step, {}
        callback.on_step_end(trainer, record)
        seen += [step] if "val/loss" in record else []
    return seen


def test_validation_runs_at_the_listed_steps_alone_or_beside_every():
    assert validated_steps(Validation(0, 1, at=[0, 3, 7]), 10) == [0, 3, 7]  # every=0: not even the last step
    assert validated_steps(Validation(5, 1, at=[3]), 10) == [0, 3, 5, 10]


def test_eval_at_alone_builds_the_validation_and_negative_steps_are_refused():
    assert any(isinstance(cb, Validation) for cb in build_callbacks(load_config(None, ["eval.every=0", "eval.at=[4]"])))
    assert not any(isinstance(cb, Validation) for cb in build_callbacks(load_config(None, ["eval.every=0"])))
    with pytest.raises(ConfigError, match=r"eval.at=\[4, -1\] lists a negative step"):
        load_config(None, ["eval.at=[4,-1]"])
