"""Property-based: any override of any config key either loads or fails with our own ConfigError."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from pretrain.config import Config, ConfigError, load_config


def leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        value = node[key]
        dotted = f"{prefix}{key}"
        keys += leaf_keys(value, f"{dotted}.") if isinstance(value, DictConfig) else [dotted]
    return keys


KEYS = leaf_keys(OmegaConf.structured(Config))
VALUES = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.booleans().map(str).map(str.lower), st.text(alphabet="abcxyz_-.09/", max_size=12), st.just("null"),
    st.just("[]"), st.just("{}"), st.just("[1, 2]"),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.one_of(st.sampled_from(KEYS), st.text(alphabet="abcdefghij._", min_size=1, max_size=15)),
       value=VALUES)
def test_any_override_loads_or_raises_config_error(key, value):
    try:
        cfg = load_config("configs/tiny.yaml", [f"{key}={value}"])
    except ConfigError as err:
        assert str(err)  # a message, never an empty error
    else:
        assert isinstance(cfg, Config)


def test_schema_has_every_section():
    sections = {k.split(".")[0] for k in KEYS}
    assert {"run", "model", "data", "train", "eval", "checkpoint", "log", "deepspeed", "monitors", "jobs"} <= sections
