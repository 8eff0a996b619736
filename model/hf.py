"""Conversion between growlm's Llama and Hugging Face transformers' LlamaForCausalLM (config, weights, folders).

Our RoPE uses HF's "rotate half" layout, so weights map one-to-one by name: no q/k permutation.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sentencepiece import sentencepiece_model_pb2
from transformers import GenerationConfig, LlamaConfig

from model.config import ROPE_SCALING_TYPES, ModelConfig, RopeScaling
from settings.errors import UserError
from model.mup import fold_into_final_norm, readout_multiplier

# Sentencepiece ids our tokenizer is trained with; HF's generate() stops on eos_token_id.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

_TOP_LEVEL = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_PER_LAYER = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
}
_OURS_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Older HF checkpoints store the RoPE frequencies; they are derived from rope_theta, so they carry nothing.
_HF_DERIVED = re.compile(r".*rotary_emb\.inv_freq")


def to_hf_config(cfg: ModelConfig) -> LlamaConfig:
    """The LlamaConfig that builds a LlamaForCausalLM computing exactly what `Llama(cfg)` computes."""
    rope: dict = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    if cfg.rope_scaling is not None:
        rope |= dataclasses.asdict(cfg.rope_scaling)
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_width,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        initializer_range=cfg.init_std,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters=rope,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=None,
        architectures=["LlamaForCausalLM"],
    )


class UnsupportedModel(UserError, ValueError):
    """An HF model folder using a feature growlm's Llama does not compute; the message names key and value."""


def from_hf_config(hf_cfg: LlamaConfig) -> ModelConfig:
    """The ModelConfig for an HF Llama; refuses features our model lacks rather than silently computing else."""
    rope = dict(hf_cfg.rope_parameters or {})
    rope_type = rope.get("rope_type", "default")
    unsupported = {
        "hidden_act": hf_cfg.hidden_act != "silu",
        "attention_bias": bool(hf_cfg.attention_bias),
        "mlp_bias": bool(hf_cfg.mlp_bias),
        "rope_scaling.rope_type": rope_type not in ("default", *ROPE_SCALING_TYPES),
    }
    values = {"hidden_act": hf_cfg.hidden_act, "attention_bias": hf_cfg.attention_bias,
              "mlp_bias": hf_cfg.mlp_bias, "rope_scaling.rope_type": rope_type}
    bad = [f"{name}={values[name]!r}" for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise UnsupportedModel(
            f"HF Llama config uses what growlm's Llama does not implement: {', '.join(bad)} (growlm computes "
            f"hidden_act='silu', no biases, rope_type in {['default', *ROPE_SCALING_TYPES]})")
    scaling = None
    if rope_type != "default":
        fields = {f.name for f in dataclasses.fields(RopeScaling)}
        scaling = RopeScaling(**{k: v for k, v in rope.items() if k in fields})
    head_dim = getattr(hf_cfg, "head_dim", None)
    return ModelConfig(
        dim=hf_cfg.hidden_size,
        n_layers=hf_cfg.num_hidden_layers,
        n_heads=hf_cfg.num_attention_heads,
        n_kv_heads=hf_cfg.num_key_value_heads,
        head_dim=None if head_dim in (None, hf_cfg.hidden_size // hf_cfg.num_attention_heads) else int(head_dim),
        ffn_dim=hf_cfg.intermediate_size,
        vocab_size=hf_cfg.vocab_size,
        max_seq_len=hf_cfg.max_position_embeddings,
        rope_theta=float(rope["rope_theta"]),
        rope_scaling=scaling,
        norm_eps=float(hf_cfg.rms_norm_eps),
        tie_embeddings=bool(hf_cfg.tie_word_embeddings),
        init_std=float(hf_cfg.initializer_range),
    )


def read_hf_config(path: str | Path) -> ModelConfig:
    """The model shape of an HF folder's config.json; another architecture, or a feature growlm does not
    compute (biases, another RoPE scaling, sliding-window attention), is refused naming the key and value."""
    config_file = Path(path) / "config.json"
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UnsupportedModel(f"{config_file} cannot be read as JSON: {err}") from None
    if raw.get("model_type") != "llama":
        raise UnsupportedModel(f"{config_file}: model_type={raw.get('model_type')!r} is not supported; growlm "
                               "builds Llama-family models (model_type='llama')")
    for key in ("sliding_window", "use_sliding_window"):
        if raw.get(key):
            raise UnsupportedModel(f"{config_file}: {key}={raw[key]!r}: growlm's attention is full causal, "
                                   "not sliding-window")
    try:
        return from_hf_config(LlamaConfig.from_pretrained(path))
    except UnsupportedModel as err:
        raise UnsupportedModel(f"{config_file}: {err}") from None


class UnreadableWeights(UserError, ValueError):
    """A safetensors file that cannot be read (truncated, or not safetensors); the message names it."""


def _tensor_names(file: Path) -> list[str]:
    try:
        with safe_open(file, "pt") as f:
            return list(f.keys())
    except Exception as err:  # safetensors raises its own SafetensorError (no common base with OSError)
        raise UnreadableWeights(f"{file} cannot be read as safetensors ({err}): truncated or damaged? "
                                "Download or export it again") from None


class HFWeights(Mapping[str, torch.Tensor]):
    """An HF folder's weights under growlm's names, read one tensor at a time (as fp32) from its safetensors
    file or shards: a caller that copies them parameter by parameter (ZeRO-3) never holds the whole model."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.path / "model.safetensors").is_file():
            weight_map = {name: "model.safetensors" for name in _tensor_names(self.path / "model.safetensors")}
        else:
            raise FileNotFoundError(f"{self.path} holds no model.safetensors or model.safetensors.index.json")
        for shard in sorted(set(weight_map.values()) - {"model.safetensors"}):
            _tensor_names(self.path / shard)  # a truncated shard is named now, not at its first tensor
        top = {v: k for k, v in _TOP_LEVEL.items()}
        per_layer = {v: k for k, v in _PER_LAYER.items()}
        self._source = {_rename(k, top, per_layer, _HF_LAYER, "layers."): (k, shard)
                        for k, shard in weight_map.items() if not _HF_DERIVED.fullmatch(k)}
        if "output.weight" not in self._source and "tok_embeddings.weight" in self._source:
            self._source["output.weight"] = self._source["tok_embeddings.weight"]  # tied: HF dropped the copy

    def __getitem__(self, name: str) -> torch.Tensor:
        hf_name, shard = self._source[name]
        with safe_open(self.path / shard, "pt") as f:
            return f.get_tensor(hf_name).float()

    def __iter__(self):
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)


def _rename(key: str, top: dict[str, str], per_layer: dict[str, str], layer_re: re.Pattern, prefix: str) -> str:
    if key in top:
        return top[key]
    match = layer_re.fullmatch(key)
    if match and match.group(2) in per_layer:
        return f"{prefix}{match.group(1)}.{per_layer[match.group(2)]}"
    raise KeyError(f"no mapping for state-dict key {key!r}")


def to_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename our weights to HF's; tensors are shared, not copied. A tied model keeps both embedding keys."""
    return {_rename(k, _TOP_LEVEL, _PER_LAYER, _OURS_LAYER, "model.layers."): v for k, v in sd.items()}


def from_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF weights to ours. A missing lm_head means HF tied it and dropped the copy, so it is restored."""
    top = {v: k for k, v in _TOP_LEVEL.items()}
    per_layer = {v: k for k, v in _PER_LAYER.items()}
    out = {
        _rename(k, top, per_layer, _HF_LAYER, "layers."): v for k, v in sd.items() if not _HF_DERIVED.fullmatch(k)
    }
    if "output.weight" not in out and "tok_embeddings.weight" in out:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


EXPORT_MARKER = ".growlm-export.json"
"""Written into every export: `overwrite` replaces a folder only when it holds one (an export growlm wrote)."""


def save_hf_folder(
    state_dict: dict[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: str | Path,
    tokenizer_files: dict[str, Path] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a folder `LlamaForCausalLM.from_pretrained` (and, with a tokenizer, `AutoTokenizer`) loads, computing
    what `Llama(cfg)` computes (µP included: its readout multiplier is folded in).

    `tokenizer_files` (name -> file) is a sentencepiece `tokenizer.model` (a LlamaTokenizer config is written
    for it) or an HF tokenizer's files, copied as they are, whose BOS/EOS ids go into the model's config.
    Written into a temp dir beside out_dir and renamed into place, so readers never see a half-written folder.
    """
    out_dir = Path(out_dir)
    check_export_target(out_dir, overwrite)
    # µP's readout multiplier is the only multiplier in the forward: into the final norm's gain with it, so the
    # folder is a plain Llama (init and lr scales live in the weights already).
    hf_sd = to_hf_state_dict(fold_into_final_norm(state_dict, readout_multiplier(cfg)))
    if cfg.tie_embeddings:  # safetensors refuses shared storage; HF re-ties lm_head on load
        hf_sd.pop("lm_head.weight", None)
    hf_cfg = to_hf_config(cfg)
    hf_cfg.dtype = next(iter(hf_sd.values())).dtype
    tokenizer_files = dict(tokenizer_files or {})
    if "tokenizer.json" in tokenizer_files:
        hf_cfg.bos_token_id, hf_cfg.eos_token_id = _special_ids(tokenizer_files)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()  # a plain mkdir: the folder gets the umask's mode (mkdtemp's would be 0700)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in hf_sd.items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})
        hf_cfg.save_pretrained(tmp)
        GenerationConfig.from_model_config(hf_cfg).save_pretrained(tmp)
        for name, file in tokenizer_files.items():
            shutil.copyfile(file, tmp / name)
        if "tokenizer.model" in tokenizer_files:
            tok_cfg = hf_tokenizer_config(tokenizer_files["tokenizer.model"].read_bytes(), cfg.max_seq_len)
            (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
        written = sorted(p.name for p in tmp.iterdir())
        (tmp / EXPORT_MARKER).write_text(export_marker(written, "growlm export"))
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _special_ids(tokenizer_files: dict[str, Path]) -> tuple[int | None, int | None]:
    """(bos, eos) ids of an HF tokenizer, read by transformers from its files."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        for name, file in tokenizer_files.items():
            shutil.copyfile(file, Path(folder) / name)
        tok = AutoTokenizer.from_pretrained(folder)
    return tok.bos_token_id, tok.eos_token_id


class ExportTargetError(UserError, FileExistsError):
    """An export target that is a file, or a folder holding what an export did not write."""


def check_export_target(out_dir: Path, overwrite: bool, marker: str = EXPORT_MARKER) -> None:
    """Refuse, before anything is written, a target that is a file, or a non-empty folder unless `overwrite` and
    it holds an earlier export and nothing else (`marker` says growlm wrote it and lists what it wrote; the GGUF
    converter passes its own)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportTargetError(f"{out_dir} is a file, not a folder: choose a new or empty folder to export into")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ExportTargetError(f"{out_dir} exists and is not empty: choose a new or empty folder, or --overwrite "
                              "(overwrite=True) to replace an earlier export there")
    entries = sorted(out_dir.iterdir())
    if not (out_dir / marker).is_file():
        raise ExportTargetError(f"{out_dir} holds {[p.name for p in entries][:5]} and no {marker}: it is not a "
                              "growlm export, so --overwrite leaves it alone; choose another folder")
    foreign = [p.name for p in entries if p.name not in _exported_files(out_dir, marker)]
    if foreign:  # overwrite replaces a previous export, never a run, a checkpoint or anything else
        raise ExportTargetError(f"{out_dir} holds {foreign[:5]}, which an export does not write (a run or "
                              "checkpoints?): not replacing it; choose another folder")


def export_marker(written: list[str], by: str) -> str:
    """A marker's content: who wrote the folder and the names it wrote (what a later overwrite may replace)."""
    return json.dumps({"written_by": by, "files": sorted(written)}) + "\n"


def _exported_files(out_dir: Path, marker: str) -> set[str]:
    """The names the export in `out_dir` wrote (its marker lists them; an older marker without the list: the
    kinds of file an HF folder holds), with the marker itself."""
    try:
        listed = json.loads((out_dir / marker).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if listed is None:
        listed = [p.name for p in out_dir.iterdir() if p.is_file() and p.name != "manifest.json"
                  and p.suffix in (".json", ".safetensors", ".model")]
    return {*listed, marker}


def hf_tokenizer_config(sp_model: bytes, max_seq_len: int) -> dict[str, object]:
    """tokenizer_config.json that makes `LlamaTokenizer` encode exactly as this sentencepiece model does.

    LlamaTokenizer always prepends a space unless told otherwise, which is wrong for models trained with
    add_dummy_prefix=False (ours); and it is a BPE tokenizer, so a unigram model cannot be reproduced.
    """
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_model)
    spec = proto.trainer_spec
    if spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        raise ValueError("HF's LlamaTokenizer is BPE-only; export a bpe sentencepiece model or no tokenizer")
    ids = (spec.unk_id, spec.bos_id, spec.eos_id)
    if ids != (UNK_ID, BOS_ID, EOS_ID):
        raise ValueError(f"tokenizer has (unk, bos, eos) ids {ids}; the HF config says {(UNK_ID, BOS_ID, EOS_ID)}")
    return {
        "tokenizer_class": "LlamaTokenizer",
        "add_prefix_space": proto.normalizer_spec.add_dummy_prefix,
        "legacy": False,
        # Training packs documents as tokens + eos, with no bos: encode the same way by default.
        "add_bos_token": False,
        "add_eos_token": False,
        "unk_token": proto.pieces[UNK_ID].piece,
        "bos_token": proto.pieces[BOS_ID].piece,
        "eos_token": proto.pieces[EOS_ID].piece,
        "model_max_length": max_seq_len,
    }


def _replace_dir(src: Path, dst: Path) -> None:
    """Move src to dst; an existing dst is moved aside first (rename cannot replace a non-empty directory)."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.replace(dst, old / dst.name)
    os.replace(src, dst)
    shutil.rmtree(old)


def load_hf_folder(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read an HF Llama folder (single or sharded safetensors; fp32, fp16 or bf16) into our config and an
    fp32 state dict (a tied head shares the embedding tensor)."""
    cfg, weights = read_hf_config(path), HFWeights(path)
    sd = {name: weights[name] for name in weights if name != "output.weight" or not cfg.tie_embeddings}
    sd["output.weight"] = sd["tok_embeddings.weight"] if cfg.tie_embeddings else weights["output.weight"]
    return cfg, sd
