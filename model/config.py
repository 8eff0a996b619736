"""The model's shape: one typed dataclass, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass


class ModelConfigError(ValueError):
    """A model shape that cannot be built; the message names the field and what would be valid."""


@dataclass
class ModelConfig:
    """Shape of a Llama-style decoder. Field names follow Llama/torchtitan; HF names are mapped in `model.hf`."""

    dim: int = 128
    """Width of the residual stream (HF: hidden_size)."""
    n_layers: int = 4
    """Number of transformer blocks L (HF: num_hidden_layers)."""
    n_heads: int = 4
    """Query heads; head_dim = dim // n_heads (HF: num_attention_heads)."""
    n_kv_heads: int = 4
    """Key/value heads for grouped-query attention; must divide n_heads (HF: num_key_value_heads)."""
    ffn_dim: int = 352
    """Hidden width of the SwiGLU MLP (HF: intermediate_size)."""
    vocab_size: int = 4096
    """Tokenizer vocabulary size; the embedding and LM head have this many rows."""
    max_seq_len: int = 256
    """Longest sequence the model is trained for; data.seq_len may not exceed it."""
    rope_theta: float = 10000.0
    """Base of the rotary embedding frequencies (Llama-2: 1e4, Llama-3: 5e5)."""
    norm_eps: float = 1e-5
    """Epsilon inside RMSNorm."""
    tie_embeddings: bool = False
    """Share the token embedding matrix with the LM head (small models save many parameters)."""
    init_std: float = 0.02
    """Std of the normal init for every linear and embedding weight (Llama / HF initializer_range)."""
    scale_residual_init: bool = True
    """Divide the init std of the residual-branch outputs (wo, w2) by sqrt(2 * n_layers), as GPT-2/OLMo do,
    so the residual stream's variance does not grow with depth at init."""

    def __post_init__(self) -> None:
        positive = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "max_seq_len")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ModelConfigError(
                f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}; "
                f"valid n_heads divide dim (e.g. {_divisors(self.dim)})"
            )
        if self.n_heads % self.n_kv_heads:
            raise ModelConfigError(
                f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.n_kv_heads}; "
                f"valid n_kv_heads: {_divisors(self.n_heads)}"
            )
        if self.head_dim % 2:
            raise ModelConfigError(
                f"head_dim = model.dim / model.n_heads = {self.head_dim} must be even for rotary embeddings"
            )
        for name in ("rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            # YAML 1.1 reads `1e-5` (no dot) as a string; say so instead of failing on `str <= int`.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ModelConfigError(f"model.{name} must be a number > 0, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count from the shape alone (matches `sum(p.numel())` of the built model)."""
        kv_dim = self.n_kv_heads * self.head_dim
        attn = self.dim * (2 * self.dim + 2 * kv_dim)
        mlp = 3 * self.dim * self.ffn_dim
        per_block = attn + mlp + 2 * self.dim
        embed = self.vocab_size * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        total = self.n_layers * per_block + self.dim + head
        return total + embed if include_embedding else total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 N + 12 L T d (PaLM appendix B / nanoGPT).

        6N counts forward (2N) and backward (4N) matmul FLOPs of every non-embedding weight (the LM head is
        a matmul, so it is counted; the embedding lookup is not). The attention term 12 * L * T * d covers the
        QK^T and AV matmuls (2 * 2 * T * d per token per layer forward, x3 for fwd+bwd), counted without the
        causal half-saving, as PaLM and torchtitan do, so MFU figures are comparable with theirs.
        """
        n = self.num_params(include_embedding=False)
        if self.tie_embeddings:  # the tied matrix is still used as the LM-head matmul
            n += self.vocab_size * self.dim
        return 6.0 * n + 12.0 * self.n_layers * seq_len * self.dim


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
