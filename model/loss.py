"""The LM head fused with cross-entropy, in token chunks: never holds [tokens, vocab] fp32 logits at once.

At vocab 32k and 8k tokens per micro-batch the plain path materializes ~1 GB of fp32 logits forward and as
much again for their gradient. Here the head's matmul, the fp32 log-softmax and its gradient run one chunk of
tokens at a time; backward recomputes each chunk's logits (one extra head matmul, ~2% of a 1b step's FLOPs)
instead of keeping them. It returns per-token losses and log-normalizers (log Z), so the mean loss and the
z-loss are reductions the caller chooses, with gradients through both.
"""
from __future__ import annotations

import torch
from torch import Tensor


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        log_z = torch.empty_like(losses)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = (hidden[rows] @ weight.T).float()
            log_z[rows] = torch.logsumexp(logits, dim=-1)
            losses[rows] = log_z[rows] - logits.gather(1, targets[rows, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, targets, log_z)
        ctx.chunk = chunk
        return losses, log_z

    @staticmethod
    def backward(ctx, grad_losses: Tensor, grad_log_z: Tensor):
        hidden, weight, targets, log_z = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            probs = ((hidden[rows] @ weight.T).float() - log_z[rows, None]).exp_()
            # d loss_i / d logits = softmax - onehot(target);  d log Z_i / d logits = softmax
            grad_logits = probs.mul_((grad_losses[rows] + grad_log_z[rows])[:, None])
            grad_logits.scatter_add_(1, targets[rows, None], -grad_losses[rows, None])
            grad_logits = grad_logits.to(hidden.dtype)
            grad_hidden[rows] = grad_logits @ weight
            grad_weight.addmm_(grad_logits.T.float(), hidden[rows].float())
        return grad_hidden, grad_weight.to(weight.dtype), None, None


def chunked_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor,
                                 chunk: int) -> tuple[Tensor, Tensor]:
    """(per-token cross-entropy, per-token log Z) of `hidden @ weight.T` against `targets`, both fp32.

    hidden [..., dim], weight [vocab, dim], targets [...] -> two tensors of targets' shape; `chunk` tokens
    of logits exist at a time (chunk x vocab fp32)."""
    if chunk <= 0:
        raise ValueError(f"chunk={chunk} must be > 0 tokens")
    shape = targets.shape
    losses, log_z = _ChunkedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight,
                                                     targets.reshape(-1), chunk)
    return losses.view(shape), log_z.view(shape)
