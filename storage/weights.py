"""Reading a model's weights from any folder that holds them, and the portable weights folder growth writes.

Growth, `train.init_from`, the jobs and the export script all turn a folder into (config, fp32 state dict):
a weights folder (`model.pt` + `model_config.json`), a training checkpoint (any ZeRO stage, consolidated on
one process) or a transformers Llama folder. One reader for all of them, free of the trainer.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from model.config import ModelConfig, QuantizationConfig
from model.quant import quantized_state_dict
from storage import pickles
from storage.folders import MANIFEST, WEIGHTS, WEIGHTS_CONFIG, CheckpointError, locate, verify


def consolidated_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a training checkpoint (any ZeRO stage), on CPU, on one process."""
    verify(ckpt)
    if any(ckpt.glob("bf16_zero_pp_rank_*_optim_states.pt")):
        sd = _consolidate_bf16_optimizer(ckpt)
    elif any(ckpt.glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
        # ZeRO-1 keeps no record of frozen parameters (norm-only mode) beside the optimizer's: their module
        # copy, stored whole at stage 1/2, is the value (ZeRO-3's are merged by zero_to_fp32 itself)
        if (ckpt / "mp_rank_00_model_states.pt").is_file():
            module = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
            sd.update({name: weight for name, weight in module.items() if name not in sd and weight.numel() > 0})
    else:  # ZeRO-0: the module state is stored whole
        sd = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
    return {k: v.detach().float() for k, v in sd.items()}


def _consolidate_bf16_optimizer(ckpt: Path) -> dict[str, torch.Tensor]:
    """fp32 masters from DeepSpeed's BF16_Optimizer files (bf16 + ZeRO-1 with fp32 gradient accumulation),
    which zero_to_fp32 does not read: each rank holds one equal slice of every flat parameter group, laid out
    in the order of the model file's `param_shapes`."""
    model_states = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    files = sorted(ckpt.glob("bf16_zero_pp_rank_*_optim_states.pt"), key=lambda p: int(p.name.split("_")[4]))
    with torch.serialization.safe_globals(pickles.deepspeed_classes()):
        partitions = [torch.load(f, map_location="cpu", weights_only=True)["optimizer_state_dict"]
                      ["single_partition_of_fp32_groups"] for f in files]
    sd: dict[str, torch.Tensor] = {}
    for i, shapes in enumerate(model_states["param_shapes"]):
        flat = torch.cat([rank_groups[i] for rank_groups in partitions])
        offset = 0
        for name, shape in shapes.items():
            numel = int(torch.Size(shape).numel())
            sd[name] = flat[offset:offset + numel].view(shape).clone()
            offset += numel
    shared = model_states.get("shared_params") or {}
    for name, weight in model_states["module"].items():
        if name not in sd and name not in shared:  # frozen: no master exists, the module copy is the value
            sd[name] = weight.float()
    for name, source in shared.items():
        sd[name] = sd[source]
    return sd


def model_config_of(ckpt: Path) -> ModelConfig:
    """The model shape a checkpoint or weights folder was saved with."""
    if (ckpt / WEIGHTS_CONFIG).is_file():
        return ModelConfig(**json.loads((ckpt / WEIGHTS_CONFIG).read_text()))
    from omegaconf import OmegaConf

    if not (ckpt / "config.yaml").is_file():
        raise CheckpointError(f"{ckpt} has neither {WEIGHTS_CONFIG} nor config.yaml: cannot tell the model shape")
    return ModelConfig(**OmegaConf.to_container(OmegaConf.load(ckpt / "config.yaml").model))


def quantization_of(ckpt: Path) -> QuantizationConfig | None:
    """The quantization-aware training a checkpoint's run used (`train.quantization` of its config.yaml)."""
    if not (ckpt / "config.yaml").is_file():
        return None
    from omegaconf import OmegaConf

    section = OmegaConf.select(OmegaConf.load(ckpt / "config.yaml"), "train.quantization")
    if section is None or section.get("bits") is None:
        return None
    return QuantizationConfig(**OmegaConf.to_container(section))


def load_weights(path: Path, lazy: bool = False) -> tuple[ModelConfig, Mapping[str, torch.Tensor]]:
    """(config, fp32 state dict) from a weights folder (growth output), a training checkpoint or a
    transformers Llama folder. `lazy`: an HF folder's tensors are read only when looked up (model.hf.HFWeights),
    so a partitioned model can be filled one parameter at a time. A quantization-aware training checkpoint
    gives its quantized weights (what the model computed with), not the latent ones its optimizer kept."""
    from model.hf import HFWeights, UnsupportedModel, load_hf_folder, read_hf_config  # transformers: only here

    path = locate(path)
    if _is_hf_folder(path):
        try:
            return (read_hf_config(path), HFWeights(path)) if lazy else load_hf_folder(path)
        except UnsupportedModel as err:
            raise CheckpointError(str(err)) from None
    if (path / WEIGHTS).is_file():
        return model_config_of(path), torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    _refuse_unless_checkpoint(path)
    state = consolidated_state_dict(path)
    quantization = quantization_of(path)
    return model_config_of(path), quantized_state_dict(state, quantization) if quantization else state


def weights_config(path: Path) -> ModelConfig:
    """The model shape `load_weights(path)` would give, read without any tensor (what a pre-launch check needs);
    refuses what load_weights refuses, naming it."""
    from model.hf import UnsupportedModel, read_hf_config

    path = locate(path)
    if _is_hf_folder(path):
        try:
            return read_hf_config(path)
        except UnsupportedModel as err:
            raise CheckpointError(str(err)) from None
    if not (path / WEIGHTS).is_file():
        _refuse_unless_checkpoint(path)
        verify(path)  # a damaged checkpoint is named now, not when the ranks load it
    return model_config_of(path)


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / MANIFEST).is_file()


def _refuse_unless_checkpoint(path: Path) -> None:
    if not (path / MANIFEST).is_file():
        raise CheckpointError(
            f"{path} is neither a weights folder ({WEIGHTS} + {WEIGHTS_CONFIG}), a complete checkpoint "
            f"({MANIFEST}) nor a transformers model folder (config.json + safetensors)"
        )


def save_weights(out: Path, cfg: ModelConfig, state_dict: dict[str, torch.Tensor], record: dict | None = None,
                 extra: Callable[[Path], None] | None = None) -> None:
    """Write a portable weights folder atomically (temp dir + rename); refuses to overwrite one. `extra(tmp)`
    writes more files into the folder before it is renamed into place."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; choose a new output folder")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp / WEIGHTS)
    (tmp / WEIGHTS_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    if record is not None:
        (tmp / "record.json").write_text(json.dumps(record, indent=2, default=str))
    if extra is not None:
        extra(tmp)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
