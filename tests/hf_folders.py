"""Small open-weight-style folders built in-process: a random transformers Llama written with
`save_pretrained` and a byte-level BPE tokenizer trained with `tokenizers` (no hub, no network)."""
from __future__ import annotations

from pathlib import Path

import torch

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def train_hf_tokenizer(folder: Path, vocab_size: int = 512) -> Path:
    """A Llama-3-like tokenizer (byte-level BPE, BOS prepended by its post-processor) saved to `folder`."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([topics[name] for name in sorted(topics)], trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)
    fast.save_pretrained(folder)
    return folder


def save_hf_llama(folder: Path, vocab_size: int, *, tie: bool = False, dtype: torch.dtype = torch.float32,
                  shard: bool = False, head_dim: int | None = 24, rope: dict | None = None, seed: int = 0,
                  **config) -> Path:
    """A random LlamaForCausalLM (GQA, head_dim != dim / heads by default, Llama-3 RoPE scaling) written with
    save_pretrained; norms perturbed so a swapped mapping would show."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rope_parameters=rope or LLAMA3_ROPE, tie_word_embeddings=tie, bos_token_id=0, eos_token_id=1)
    if head_dim is not None:
        fields["head_dim"] = head_dim
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**(fields | config))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.to(dtype).save_pretrained(folder, max_shard_size="100KB" if shard else "5GB")
    return folder


def open_weight_folder(folder: Path, **kwargs) -> Path:
    """Model and tokenizer in one folder, as released models ship."""
    train_hf_tokenizer(folder)
    from transformers import AutoTokenizer

    return save_hf_llama(folder, len(AutoTokenizer.from_pretrained(folder)), **kwargs)
