"""From a checkpoint to a grown weights folder: resolve the target shape, grow, write the folder and its record.

The folder is `storage.weights.save_weights`' format (model.pt + model_config.json + record.json) plus the
source's tokenizer.model when it has one, so a run that starts from it (`train.init_from=DIR`) can be pinned to
the tokenizer the weights were trained with (`data.tokenizer=DIR/tokenizer.model`).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from growth import GrowthError, GrowthResult, get_operator, grow
from launch.command import render_overrides
from model import ModelConfig
from model.config import ModelConfigError
from storage.carry import save_carry, source_optimizer, source_progress
from storage.folders import MANIFEST, WEIGHTS, CheckpointError, locate, verify
from storage.io import read_yaml
from storage.tokenizer_files import copy_tokenizer, find_tokenizer
from storage.weights import load_weights, save_weights

MODEL_PRESETS = Path(__file__).resolve().parent.parent / "configs" / "model"


def resolve_target(source: ModelConfig, spec: Sequence[str]) -> ModelConfig:
    """The grown shape from `--to`: a model YAML, a preset name (configs/model/NAME.yaml), a run config whose
    `model:` is either, or `field=value` overrides of the source's shape (`n_layers=8`, `model.n_layers=8`)."""
    if not spec:
        raise GrowthError("--to is empty; give a model YAML, a preset name or overrides like n_layers=8")
    if all("=" in item for item in spec):
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        items = [item.removeprefix("model.") for item in spec]
        keys = [i.split("=", 1)[0] for i in items]
        unknown = sorted(set(keys) - fields)
        if unknown:
            raise GrowthError(f"--to sets unknown model fields {unknown}; valid: {sorted(fields)}")
        if repeated := sorted({k for k in keys if keys.count(k) > 1}):
            raise GrowthError(f"--to sets {repeated} more than once ({' '.join(spec)}): give each field one value")
        values = OmegaConf.to_container(OmegaConf.from_dotlist(items))  # YAML-typed values, 1e-5 as a float
        return _model_config(dataclasses.asdict(source) | values, f"--to {' '.join(spec)}")
    if len(spec) != 1:
        raise GrowthError(f"--to takes one model YAML / preset name, or only field=value overrides; got {list(spec)}")
    return _model_config(_model_fields(spec[0]), f"--to {spec[0]}")


def _model_fields(name: str) -> dict[str, Any]:
    presets = sorted(p.stem for p in MODEL_PRESETS.glob("*.yaml"))
    path = next((p for p in (Path(name), MODEL_PRESETS / f"{name}.yaml") if p.is_file()), None)
    if path is None:
        raise GrowthError(f"--to {name!r} is neither a YAML file nor a model preset; presets: {presets}")
    raw = OmegaConf.to_container(read_yaml(path, "--to model file"))
    if isinstance(raw, dict) and "model" in raw:  # a run config: its model section (a mapping or a preset)
        raw = raw["model"] if isinstance(raw["model"], dict) else _model_fields(raw["model"])
    if not isinstance(raw, dict):
        raise GrowthError(f"{path} is not a YAML mapping of model fields")
    return raw


def _model_config(values: dict[str, Any], label: str) -> ModelConfig:
    try:
        return ModelConfig(**values)
    except TypeError as err:  # an unknown field in a YAML file
        raise GrowthError(f"{label}: {err}; valid fields: {[f.name for f in dataclasses.fields(ModelConfig)]}") \
            from None
    except ModelConfigError as err:
        raise GrowthError(f"{label}: {err}") from None


def check_operator(op: str, params: dict[str, Any]) -> None:
    """An unknown operator (listing the valid ones) or a parameter it does not take fails before any loading."""
    taken = [p.name for p in inspect.signature(get_operator(op)).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "opt_state"]
    unknown = sorted(set(params) - set(taken))
    if unknown:
        raise GrowthError(f"operator {op!r} takes no parameter {unknown}; its parameters: {taken or 'none'}")


def source_info(path: Path) -> dict[str, Any]:
    """Where a checkpoint's weights really live (a `checkpoints/` root or its `latest` file resolves to the
    step it names), its
    training step when known, and its tokenizer when it carries one."""
    try:
        path = locate(path)
    except CheckpointError as err:
        raise GrowthError(str(err)) from None
    step = None
    if (path / MANIFEST).is_file():
        try:
            step = verify(path).get("step")  # a damaged manifest is named, as export and peeling name it
        except CheckpointError as err:
            raise GrowthError(str(err)) from None
    elif (path / "record.json").is_file():  # a grown folder: the step of the checkpoint it was grown from
        step = json.loads((path / "record.json").read_text()).get("source_step")
    tokenizer = find_tokenizer(path)
    return {"path": str(path.resolve()), "step": step, "tokenizer": str(tokenizer) if tokenizer else None}


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """`--param k=v` items -> operator keyword arguments, values YAML-typed (`block=2` is an int)."""
    bad = [item for item in items if "=" not in item]
    if bad:
        raise GrowthError(f"--param takes key=value, got {bad}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(items)))


def check_target(cfg: ModelConfig, target_spec: Sequence[str]) -> ModelConfig:
    """The target shape `--to` names, refused when it is the source's own (nothing to grow)."""
    target = resolve_target(cfg, target_spec)
    if target == cfg:
        raise GrowthError(f"--to {' '.join(target_spec)} is the source's own shape ({cfg.n_layers} layers, dim "
                          f"{cfg.dim}): nothing to grow; give a larger n_layers, dim, n_heads or ffn_dim")
    return target


def grow_folder(source: Path, op: str, target_spec: Sequence[str], out: Path,
                params: dict[str, Any] | None = None, carry: bool = False) -> GrowthResult:
    """Grow the checkpoint at `source` with operator `op` into the shape `target_spec` and write it to `out`;
    `carry` also maps the source's Adam moments and writes them, with its step and sampler position, as
    carry.pt (storage/carry.py) for a run that continues training (`train.carry`).

    Every check (operator name, output folder, checkpoint, target shape, operator parameters) runs before
    anything is written, so a refused request leaves no folder behind."""
    params = dict(params or {})
    check_operator(op, params)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GrowthError(f"--out {out} exists and is {'a file' if not out.is_dir() else 'not empty'}; choose a new "
                          "--out")
    info = source_info(source)
    cfg, state = load_weights(Path(info["path"]))
    target = check_target(cfg, target_spec)
    if carry:
        if not (Path(info["path"]) / MANIFEST).is_file():
            raise GrowthError(f"--carry needs a training checkpoint (with optimizer state); {info['path']} is a "
                              "weights folder")
        moments, optimizer_step = source_optimizer(Path(info["path"]))
        params["opt_state"] = moments
    result = grow(cfg, state, op, target, **params)
    params.pop("opt_state", None)
    result.record |= {"source": info["path"], "source_step": info["step"], "source_config": dataclasses.asdict(cfg),
                      "params": params | result.record.get("params", {}),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    def write_carry(folder: Path) -> None:
        save_carry(folder, result.opt_state, optimizer_step, source_progress(Path(info["path"])))

    save_weights(out, target, result.state_dict, result.record, write_carry if carry else None)
    if info["tokenizer"]:
        copy_tokenizer(info["tokenizer"], out)
    return result


def is_grown_folder(path: Path) -> bool:
    """A complete weights folder (save_weights renames it into place only once it is whole)."""
    return (Path(path) / WEIGHTS).is_file()


def model_overrides(cfg: ModelConfig) -> list[str]:
    """Every model field as an override: `train.init_from` requires the run's model to equal the folder's."""
    return render_overrides({f"model.{k}": v for k, v in dataclasses.asdict(cfg).items()})
