"""The model's shape: one typed dataclass, validated on construction (each field's valid values in its metadata,
settings/fields.py; the shapes that relate fields in `__post_init__`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from settings.errors import UserError
from settings.fields import an_integer, between, check_fields, choice, count, positive, ruled

ROPE_SCALING_TYPES = ("llama3",)
QUANT_SCOPES = {"blocks": ("attention", "feed_forward"), "attention": ("attention",), "mlp": ("feed_forward",)}
"""Which submodules of every block train with low-bit weights; embeddings, norms and the LM head never do."""
DOCUMENT_ATTENTION = ("auto", "dense", "flex")
"""Kernels of block-causal attention under document masking (train.document_attention, model/llama.py)."""


class ModelConfigError(UserError, ValueError):
    """A model shape that cannot be built; the message names the field and what would be valid."""


def check_section(section: Any, prefix: str) -> None:
    """The fields' own rules (settings/fields.py), refused as a ModelConfigError naming `prefix<field>`."""
    try:
        check_fields(section, prefix)
    except ValueError as err:
        raise ModelConfigError(str(err)) from None


@dataclass
class QuantizationConfig:
    """Quantization-aware training (model/quant.py): the block projections use binary or k-bit weights in the
    forward, latent fp32 weights in the optimizer, a straight-through gradient."""

    bits: Optional[int] = ruled(None, an_integer(), between(1, 16))
    """None: full precision | 1: binary, sign(w) * mean|w| per output channel | 2..16: symmetric per output
    channel, 2^k - 1 levels."""
    scope: str = choice("blocks", tuple(QUANT_SCOPES))
    """blocks: the attention and MLP projections of every block | attention | mlp."""

    def __post_init__(self) -> None:
        check_section(self, "train.quantization.")


@dataclass
class RopeScaling:
    """Llama-3's frequency-dependent RoPE scaling (HF rope_type "llama3"): wavelengths longer than
    original_max_position_embeddings / low_freq_factor are stretched by `factor`, shorter than
    .../ high_freq_factor kept, and those between interpolated smoothly."""

    rope_type: str = choice("llama3", ROPE_SCALING_TYPES)
    factor: float = positive(8.0)
    low_freq_factor: float = positive(1.0)
    high_freq_factor: float = positive(4.0)
    original_max_position_embeddings: int = count(8192)

    def __post_init__(self) -> None:
        check_section(self, "model.rope_scaling.")
        if not self.high_freq_factor > self.low_freq_factor:
            raise ModelConfigError(
                f"model.rope_scaling needs high_freq_factor > low_freq_factor, got low_freq_factor="
                f"{self.low_freq_factor}, high_freq_factor={self.high_freq_factor}")


@dataclass
class MupConfig:
    """µP (Tensor Programs V; model/mup.py): hyperparameters tuned on a model of width `base_width` carry over to
    this width. The block matrices' init std and Adam lr shrink with width, the logits are scaled by
    base_width / dim; at dim == base_width the model is the standard one."""

    base_width: Optional[int] = count(None)
    """The width (model.dim) the learning rate and init_std were tuned at (required)."""

    def __post_init__(self) -> None:
        if self.base_width is None:
            raise ModelConfigError("model.mup.base_width is required (the model.dim the lr and init_std were tuned "
                                   "at); or model.mup=null (µP off)")
        check_section(self, "model.mup.")


@dataclass
class ModelConfig:
    """Shape of a Llama-style decoder. Field names follow Llama/torchtitan; HF names are mapped in `model.hf`."""

    dim: int = count(128)
    """Width of the residual stream (HF: hidden_size)."""
    n_layers: int = count(4)
    """Number of transformer blocks L (HF: num_hidden_layers)."""
    n_heads: int = count(4)
    """Query heads (HF: num_attention_heads)."""
    head_dim: Optional[int] = count(None)
    """Width of one attention head; None: dim // n_heads (HF: head_dim, which some models set otherwise)."""
    n_kv_heads: int = count(4)
    """Key/value heads for grouped-query attention; must divide n_heads (HF: num_key_value_heads)."""
    ffn_dim: int = count(352)
    """Hidden width of the SwiGLU MLP (HF: intermediate_size)."""
    vocab_size: int = count(4096)
    """Tokenizer vocabulary size; the embedding and LM head have this many rows."""
    max_seq_len: int = count(256)
    """Longest sequence the model is trained for; data.seq_len may not exceed it."""
    rope_theta: float = positive(10000.0)
    """Base of the rotary embedding frequencies (Llama-2: 1e4, Llama-3: 5e5)."""
    rope_scaling: Optional[RopeScaling] = None
    """Llama-3.x's RoPE frequency scaling; None: plain RoPE."""
    norm_eps: float = positive(1e-5)
    """Epsilon inside RMSNorm."""
    tie_embeddings: bool = False
    """Share the token embedding matrix with the LM head (small models save many parameters)."""
    init_std: float = positive(0.02)
    """Std of the normal init for every linear and embedding weight (Llama / HF initializer_range)."""
    scale_residual_init: bool = True
    """Divide the init std of the residual-branch outputs (wo, w2) by sqrt(2 * n_layers), as GPT-2/OLMo do,
    so the residual stream's variance does not grow with depth at init."""
    mup: Optional[MupConfig] = None
    """µP: e.g. {base_width: 128} (model/mup.py, docs/guide.md); None: the standard parametrization."""

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):  # from a JSON file (weights folders, HF configs)
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if isinstance(self.mup, dict):
            self.mup = MupConfig(**self.mup)
        check_section(self, "model.")  # YAML 1.1 reads `1e-5` (no dot) as a string: "must be a number"
        if self.head_dim is None and self.dim % self.n_heads:
            raise ModelConfigError(
                f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}; "
                f"valid n_heads divide dim (e.g. {_divisors(self.dim)})"
            )
        if self.n_heads % self.n_kv_heads:
            raise ModelConfigError(
                f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.n_kv_heads}; "
                f"valid n_kv_heads: {_divisors(self.n_heads)}"
            )
        if self.head_width % 2:
            raise ModelConfigError(
                f"the head width (model.head_dim, or model.dim / model.n_heads) = {self.head_width} must be even "
                "for rotary embeddings"
            )

    @property
    def head_width(self) -> int:
        """The width of one attention head in effect: head_dim, or dim // n_heads when it is unset."""
        return self.head_dim or self.dim // self.n_heads

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count from the shape alone (matches `sum(p.numel())` of the built model)."""
        q_dim, kv_dim = self.n_heads * self.head_width, self.n_kv_heads * self.head_width
        attn = self.dim * (2 * q_dim + 2 * kv_dim)
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
        return 6.0 * n + 12.0 * self.n_layers * seq_len * self.n_heads * self.head_width


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
