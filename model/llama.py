"""A from-scratch Llama-style decoder: RMSNorm, RoPE, grouped-query SDPA attention (flex_attention for
block-causal masks when asked), SwiGLU.

The model knows nothing of how it is distributed or checkpointed: the trainer may set
`Llama.checkpoint_fn` (e.g. `torch.utils.checkpoint` or DeepSpeed's) to recompute blocks in backward.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from model.config import DOCUMENT_ATTENTION, ModelConfig
from model.loss import chunked_linear_cross_entropy
from model.mup import init_scale, readout_multiplier
from model.quant import QuantLinear


AttentionMask = Union[torch.Tensor, BlockMask, None]
"""None: causal | a [batch, 1, seq, seq] bool tensor (True: may attend) for SDPA | a BlockMask for flex_attention."""


class Layout(NamedTuple):
    """Where the documents of packed windows lie: attention stays inside each document, through `kernel`
    (auto | dense | flex, `document_attention_kernel`), and `positions`, when given, replace 0..seq-1 as the RoPE
    positions (e.g. restarting per document). Both from `document_layout`."""

    documents: torch.Tensor
    """[batch, seq] a document id per token."""
    positions: torch.Tensor | None = None
    kernel: str = "auto"


class FusedLoss(NamedTuple):
    """Ask the head for per-token cross-entropy and log Z, computed in chunks of `chunk` tokens, instead of
    logits (model/loss.py); `log_z_grad=False` (nothing differentiates log Z) takes the faster path."""

    targets: torch.Tensor
    """[batch, seq] next-token ids."""
    chunk: int = 0
    log_z_grad: bool = True


class LlamaOutput(NamedTuple):
    logits: torch.Tensor | None
    """[batch, seq, vocab]; None when the loss was fused into the head (`fused_loss` given)."""
    hidden_states: list[torch.Tensor] | None
    """h_0..h_L residual streams (h_0 = embeddings, h_l after block l, before the final norm), when asked."""
    final_normed: torch.Tensor | None
    """norm(h_L), the LM head's input, when hidden states were asked (free: it is computed anyway)."""
    token_loss: torch.Tensor | None = None
    """[batch, seq] fp32 cross-entropy per token, under `fused_loss`."""
    log_z: torch.Tensor | None = None
    """[batch, seq] fp32 log-normalizer logsumexp(logits) per token, under `fused_loss`."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 as Llama does: bf16 mean-of-squares loses too many bits.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(cfg: ModelConfig, device: torch.device | None = None) -> torch.Tensor:
    """Rotary frequencies [head_width / 2], with Llama-3's scaling when the config has it."""
    hd = cfg.head_width
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    wavelen = 2 * math.pi / inv_freq
    long_wavelen = s.original_max_position_embeddings / s.low_freq_factor  # beyond it: divided by factor
    short_wavelen = s.original_max_position_embeddings / s.high_freq_factor  # below it: unchanged
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    between = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    scaled = torch.where(wavelen > long_wavelen, inv_freq / s.factor, inv_freq)
    return torch.where((wavelen >= short_wavelen) & (wavelen <= long_wavelen), between, scaled)


def rope_cos_sin(seq_len: int, cfg: ModelConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq, head_width] in fp32, in the "rotate half" layout HF Llama uses (no permutation)."""
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), rope_inv_freq(cfg, device))
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [batch, heads, seq, head_dim] by position; pairs are (i, i + head_dim/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def block_causal_mask(documents: torch.Tensor) -> torch.Tensor:
    """[batch, 1, seq, seq] bool: a token attends to earlier tokens of its own document only."""
    t = documents.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=documents.device).tril()
    return (causal & (documents[:, :, None] == documents[:, None, :])).unsqueeze(1)


def document_block_mask(documents: torch.Tensor) -> BlockMask:
    """`block_causal_mask` as flex_attention's BlockMask: only the blocks of the mask that are partly visible
    are kept, so the kernel skips the rest and no [seq, seq] mask exists (when compiled, i.e. on CUDA)."""
    def same_document_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (q >= kv) & (documents[b, q] == documents[b, kv])

    batch, t = documents.shape
    build = _on_device(create_block_mask, documents.device)
    return build(same_document_causal, batch, None, t, t, device=documents.device)


def document_attention_kernel(choice: str, device: torch.device) -> str:
    """The kernel (`dense` or `flex`) that `choice` (train.document_attention) runs on `device`. auto takes
    flex only on CUDA, where it runs compiled; on CPU, flex runs eagerly (materializing the scores, slower
    than SDPA with the dense mask: bench/document_masking.py) and torch gives it no backward."""
    if choice not in DOCUMENT_ATTENTION:
        raise ValueError(f"document_attention={choice!r} is not valid; choose one of {list(DOCUMENT_ATTENTION)}")
    if choice == "auto":
        return "flex" if device.type == "cuda" else "dense"
    return choice


@functools.cache
def _compiled(fn: Callable) -> Callable:
    """`fn` compiled once per process: flex attention (and building its block mask) is fast only compiled."""
    return torch.compile(fn)


def _on_device(fn: Callable, device: torch.device) -> Callable:
    """`fn` compiled on CUDA; eager elsewhere (a reference path there) and inside a region being compiled
    already (a `train.compile` block compiles it with the block)."""
    return _compiled(fn) if device.type == "cuda" and not torch.compiler.is_compiling() else fn


def document_layout(tokens: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(document id, position within the document) of every token of packed windows [batch, seq] whose
    documents each end in `eos_id`: a document starts at the window's start and after every EOS."""
    ends = (tokens == eos_id).long()
    documents = torch.cumsum(ends, dim=1) - ends  # the EOS belongs to the document it ends
    index = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    starts = torch.where(documents != F.pad(documents, (1, 0), value=-1)[:, :-1], index, 0)
    return documents, index - torch.cummax(starts, dim=1).values


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_width
        self.wq = QuantLinear(cfg.dim, cfg.n_heads * cfg.head_width, bias=False)
        self.wk = QuantLinear(cfg.dim, cfg.n_kv_heads * cfg.head_width, bias=False)
        self.wv = QuantLinear(cfg.dim, cfg.n_kv_heads * cfg.head_width, bias=False)
        self.wo = QuantLinear(cfg.n_heads * cfg.head_width, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: AttentionMask = None) -> torch.Tensor:
        """A `mask` replaces the causal mask, e.g. block-causal per document: a BlockMask runs flex_attention."""
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = self.n_kv_heads != self.n_heads
        if isinstance(mask, BlockMask):
            out = _on_device(flex_attention, x.device)(q, k, v, block_mask=mask, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = QuantLinear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w2 = QuantLinear(cfg.ffn_dim, cfg.dim, bias=False)
        self.w3 = QuantLinear(cfg.dim, cfg.ffn_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: AttentionMask = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class LMHead(nn.Linear):
    """The output projection; given targets it returns (per-token loss, log Z) through the chunked fused
    cross-entropy instead of logits. Being the module that owns the weight is what makes ZeRO-3 gather it.
    `multiplier` scales the logits (µP's readout multiplier, model/mup.py), applied to the input: same logits,
    [.., dim] work instead of [.., vocab], and the fused loss gets it too."""

    def __init__(self, in_features: int, out_features: int, multiplier: float = 1.0):
        super().__init__(in_features, out_features, bias=False)
        self.multiplier = multiplier

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, chunk: int = 0,
                log_z_grad: bool = True) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.multiplier != 1.0:
            x = x * self.multiplier
        if targets is None:
            return super().forward(x)
        return chunked_linear_cross_entropy(x, self.weight, targets, chunk, log_z_grad)


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = LMHead(cfg.dim, cfg.vocab_size, multiplier=readout_multiplier(cfg))
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.checkpoint_fn: Callable[..., torch.Tensor] | None = None
        """Set by the trainer to recompute blocks in backward (activation checkpointing)."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Llama init of every parameter, in `named_parameters` order (the order the RNG is drawn in)."""
        for name, p in self.named_parameters():
            self.init_parameter(name, p)

    @torch.no_grad()
    def init_parameter(self, name: str, p: torch.Tensor) -> None:
        """Llama init of one parameter: N(0, init_std) for weights, norms at 1, residual outputs scaled (see
        ModelConfig), hidden weights narrowed under µP (model/mup.py). One at a time, so a partitioned model can
        gather, init and release each in turn."""
        cfg = self.config
        if name.endswith("norm.weight"):
            p.fill_(1.0)
            return
        std = cfg.init_std * init_scale(cfg, name)
        if cfg.scale_residual_init and name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
            std /= math.sqrt(2 * cfg.n_layers)
        p.normal_(0.0, std)

    def forward(self, tokens: torch.Tensor, *, layout: Layout | None = None, fused_loss: FusedLoss | None = None,
                return_hidden_states: bool = False) -> LlamaOutput:
        """tokens [batch, seq] -> logits [batch, seq, vocab]: with `layout`, attention inside each document of
        packed windows; with `fused_loss`, per-token loss and log Z instead of logits; with
        `return_hidden_states` (the probes), h_0..h_L and norm(h_L) as well."""
        seq_len = tokens.shape[1]
        if seq_len > self.config.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds model.max_seq_len={self.config.max_seq_len}")
        # Recomputed per call, never a buffer: a bf16 cast of the module would otherwise round the tables.
        cos, sin = rope_cos_sin(seq_len, self.config, tokens.device)
        mask: AttentionMask = None
        if layout is not None:
            if layout.positions is not None:  # [batch, 1 (heads), seq, head_width]
                cos, sin = cos[layout.positions].unsqueeze(1), sin[layout.positions].unsqueeze(1)
            flex = document_attention_kernel(layout.kernel, tokens.device) == "flex"
            mask = document_block_mask(layout.documents) if flex else block_causal_mask(layout.documents)
        h = self.tok_embeddings(tokens)
        hidden = [h] if return_hidden_states else None
        for layer in self.layers:
            if self.checkpoint_fn is not None and self.training and torch.is_grad_enabled():
                h = self.checkpoint_fn(layer, h, cos, sin, mask)
            else:
                h = layer(h, cos, sin, mask)
            if hidden is not None:
                hidden.append(h)
        normed = self.norm(h)
        final_normed = normed if return_hidden_states else None
        if fused_loss is not None:
            token_loss, log_z = self.output(normed, *fused_loss)
            return LlamaOutput(None, hidden, final_normed, token_loss, log_z)
        return LlamaOutput(self.output(normed), hidden, final_normed)
