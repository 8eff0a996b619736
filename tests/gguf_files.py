"""A tiny GGUF file of a Llama written in-process with the `gguf` package, as llama.cpp's converter lays one out
(tensor names, Q/K rows permuted for its RoPE, a byte-level BPE vocabulary): no download in CI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def permute_for_gguf(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores Q and K rows interleaved per RoPE pair (transformers undoes this on load)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf_folder: Path, path: Path, arch: str = "llama", quant: str | None = None) -> Path:
    """The model and tokenizer of `hf_folder` (a transformers Llama with a byte-level BPE tokenizer) as GGUF.
    `quant` stores the first block's Q projection as raw bytes of that GGML type instead of F32."""
    import gguf
    import torch
    from safetensors.torch import load_file

    cfg = json.loads((hf_folder / "config.json").read_text())
    state = {k: v.to(torch.float32).numpy() for k, v in load_file(hf_folder / "model.safetensors").items()}
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    writer = gguf.GGUFWriter(path, arch)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 1e4))))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_dimension_count(cfg["hidden_size"] // heads)
    writer.add_vocab_size(cfg["vocab_size"])
    tokenizer = json.loads((hf_folder / "tokenizer.json").read_text())
    vocab = sorted(tokenizer["model"]["vocab"].items(), key=lambda kv: kv[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if token.startswith("<|") else gguf.TokenType.NORMAL
                            for token, _ in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_block = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg["num_hidden_layers"]):
        for ours, theirs in per_block.items():
            names[f"model.layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    for hf_name, gguf_name in names.items():
        if hf_name not in state:
            continue
        w = state[hf_name]
        if gguf_name.endswith("attn_q.weight"):
            w = permute_for_gguf(w, heads)
        elif gguf_name.endswith("attn_k.weight"):
            w = permute_for_gguf(w, kv_heads)
        if quant is not None and gguf_name == "blk.0.attn_q.weight":
            qtype = gguf.GGMLQuantizationType[quant]
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            raw = np.zeros((w.shape[0], w.shape[1] // block * type_size), dtype=np.uint8)
            writer.add_tensor(gguf_name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
