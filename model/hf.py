"""Conversion between growlm's Llama and Hugging Face transformers' LlamaForCausalLM (config, weights, folders).

Our RoPE uses HF's "rotate half" layout, so weights map one-to-one by name: no q/k permutation.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sentencepiece import sentencepiece_model_pb2
from transformers import GenerationConfig, LlamaConfig

from model.config import ModelConfig

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
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        initializer_range=cfg.init_std,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=None,
        architectures=["LlamaForCausalLM"],
    )


def from_hf_config(hf_cfg: LlamaConfig) -> ModelConfig:
    """The ModelConfig for an HF Llama; refuses features our model lacks rather than silently computing else."""
    rope = hf_cfg.rope_parameters or {}
    unsupported = {
        "hidden_act": hf_cfg.hidden_act != "silu",
        "attention_bias": bool(hf_cfg.attention_bias),
        "mlp_bias": bool(hf_cfg.mlp_bias),
        "rope_parameters.rope_type": rope.get("rope_type", "default") != "default",
        "head_dim": (hf_cfg.head_dim or hf_cfg.hidden_size // hf_cfg.num_attention_heads)
        != hf_cfg.hidden_size // hf_cfg.num_attention_heads,
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ValueError(f"HF Llama config uses features growlm's Llama does not implement: {', '.join(bad)}")
    return ModelConfig(
        dim=hf_cfg.hidden_size,
        n_layers=hf_cfg.num_hidden_layers,
        n_heads=hf_cfg.num_attention_heads,
        n_kv_heads=hf_cfg.num_key_value_heads,
        ffn_dim=hf_cfg.intermediate_size,
        vocab_size=hf_cfg.vocab_size,
        max_seq_len=hf_cfg.max_position_embeddings,
        rope_theta=float(rope["rope_theta"]),
        norm_eps=float(hf_cfg.rms_norm_eps),
        tie_embeddings=bool(hf_cfg.tie_word_embeddings),
        init_std=float(hf_cfg.initializer_range),
    )


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


def save_hf_folder(
    state_dict: dict[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: str | Path,
    tokenizer_model: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a folder `LlamaForCausalLM.from_pretrained` (and, with a tokenizer, `LlamaTokenizer`) loads.

    Written into a temp dir beside out_dir and renamed into place, so readers never see a half-written folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace it")
        foreign = sorted(p.name for p in out_dir.iterdir() if not _export_file(p))
        if foreign:  # overwrite replaces a previous export, never a run, a checkpoint or anything else
            raise FileExistsError(f"{out_dir} holds {foreign[:5]}, which an export does not write (a run or "
                                  "checkpoints?): not replacing it; choose another folder")
    hf_sd = to_hf_state_dict(state_dict)
    if cfg.tie_embeddings:  # safetensors refuses shared storage; HF re-ties lm_head on load
        hf_sd.pop("lm_head.weight", None)
    hf_cfg = to_hf_config(cfg)
    hf_cfg.dtype = next(iter(hf_sd.values())).dtype
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in hf_sd.items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})
        hf_cfg.save_pretrained(tmp)
        GenerationConfig.from_model_config(hf_cfg).save_pretrained(tmp)
        if tokenizer_model is not None:
            shutil.copyfile(tokenizer_model, tmp / "tokenizer.model")
            tok_cfg = hf_tokenizer_config(Path(tokenizer_model).read_bytes(), cfg.max_seq_len)
            (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _export_file(path: Path) -> bool:
    """A file of the kind an HF model folder holds (config, weights, tokenizer), not a folder or run state."""
    return path.is_file() and path.suffix in (".json", ".safetensors", ".model", ".txt") and path.name != "manifest.json"


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
    """Read an HF Llama folder (single or sharded safetensors) into our config and state dict."""
    path = Path(path)
    cfg = from_hf_config(LlamaConfig.from_pretrained(path))
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path} holds no model.safetensors or model.safetensors.index.json")
    hf_sd: dict[str, torch.Tensor] = {}
    for shard in shards:
        hf_sd.update(load_file(path / shard))
    return cfg, from_hf_state_dict(hf_sd)
