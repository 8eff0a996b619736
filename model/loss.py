"""The LM head fused with cross-entropy, in token chunks: never holds [tokens, vocab] fp32 logits at once.

At vocab 32k and 8k tokens per micro-batch the plain path materializes ~1 GB of fp32 logits forward and as
much again for their gradient. Here the head's matmul, the fp32 log-softmax and its gradient run one chunk of
tokens at a time. It returns per-token losses and log-normalizers (log Z), so the mean loss and the z-loss
are reductions the caller chooses.

Two ways to get the gradient, both exact for whatever the caller does with the outputs:
- gradient in forward (when log Z needs no gradient): softmax P of each chunk is turned at once into P W
  ([tokens, dim]) and P^T H ([vocab, dim]); d loss_i / d logits = P_i - onehot(y_i), so backward only scales
  these by the upstream per-token gradients. Three head matmuls in all, like the plain path. A non-uniform
  upstream gradient (anything but a mean) makes backward recompute P for the weight gradient.
- recompute (when log Z carries a gradient, e.g. z-loss): backward recomputes each chunk's logits, one head
  matmul more than the plain path.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _chunks(n: int, chunk: int):
    return (slice(start, start + chunk) for start in range(0, n, chunk))


def _softmax(hidden: Tensor, weight: Tensor, log_z: Tensor) -> Tensor:
    return ((hidden @ weight.T).float() - log_z[:, None]).exp_()


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int,
                grad_in_forward: bool) -> tuple[Tensor, Tensor]:
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        log_z = torch.empty_like(losses)
        p_w = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if grad_in_forward else None
        p_h = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grad_in_forward else None
        for rows in _chunks(hidden.shape[0], chunk):
            logits = (hidden[rows] @ weight.T).float()
            log_z[rows] = torch.logsumexp(logits, dim=-1)
            losses[rows] = log_z[rows] - logits.gather(1, targets[rows, None]).squeeze(1)
            if grad_in_forward:
                probs = logits.sub_(log_z[rows, None]).exp_().to(hidden.dtype)
                p_w[rows] = probs @ weight
                p_h.addmm_(probs.T.float(), hidden[rows].float())
        ctx.save_for_backward(hidden, weight, targets, log_z, p_w, p_h)
        ctx.chunk, ctx.grad_in_forward = chunk, grad_in_forward
        return losses, log_z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses: Tensor, grad_log_z: Tensor):
        hidden, weight, targets, log_z, p_w, p_h = ctx.saved_tensors
        if ctx.grad_in_forward:
            grad_hidden, grad_weight = _backward_from_forward(hidden, weight, targets, log_z, p_w, p_h,
                                                              grad_losses, ctx.chunk)
        else:
            grad_hidden, grad_weight = _backward_recompute(hidden, weight, targets, log_z, grad_losses,
                                                           grad_log_z, ctx.chunk)
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None


def _backward_from_forward(hidden, weight, targets, log_z, p_w, p_h, grad_losses, chunk):
    grad = grad_losses.float()
    grad_hidden = (grad[:, None] * (p_w - weight[targets].float())).to(hidden.dtype)
    if bool((grad == grad[0]).all()):  # a mean: P^T H scales as a whole (in place: backward runs once)
        grad_weight = p_h.mul_(grad[0])
    else:
        grad_weight = torch.zeros_like(p_h)
        for rows in _chunks(hidden.shape[0], chunk):
            probs = _softmax(hidden[rows], weight, log_z[rows]).mul_(grad[rows, None]).to(hidden.dtype)
            grad_weight.addmm_(probs.T.float(), hidden[rows].float())
    # minus the one-hot part of d loss / d logits: sum_i grad_i e_{y_i} h_i^T
    return grad_hidden, grad_weight.index_add_(0, targets, grad[:, None] * hidden.float(), alpha=-1)


def _backward_recompute(hidden, weight, targets, log_z, grad_losses, grad_log_z, chunk):
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    for rows in _chunks(hidden.shape[0], chunk):
        # d loss_i / d logits = softmax - onehot(target);  d log Z_i / d logits = softmax
        grad_logits = _softmax(hidden[rows], weight, log_z[rows]).mul_((grad_losses[rows] + grad_log_z[rows])[:, None])
        grad_logits.scatter_add_(1, targets[rows, None], -grad_losses[rows, None])
        grad_logits = grad_logits.to(hidden.dtype)
        grad_hidden[rows] = grad_logits @ weight
        grad_weight.addmm_(grad_logits.T.float(), hidden[rows].float())
    return grad_hidden, grad_weight


def chunked_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int,
                                 log_z_grad: bool = True) -> tuple[Tensor, Tensor]:
    """(per-token cross-entropy, per-token log Z) of `hidden @ weight.T` against `targets`, both fp32.

    hidden [..., dim], weight [vocab, dim], targets [...] -> two tensors of targets' shape; `chunk` tokens
    of logits exist at a time (chunk x vocab fp32). With `log_z_grad=False` log Z is returned without a
    gradient and the gradient is computed in forward (the fast path)."""
    if chunk <= 0:
        raise ValueError(f"chunk={chunk} must be > 0 tokens")
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    grad_in_forward = wants_grad and not log_z_grad
    shape = targets.shape
    losses, log_z = _ChunkedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight,
                                                     targets.reshape(-1), chunk, grad_in_forward)
    if not log_z_grad:
        log_z = log_z.detach()
    return losses.view(shape), log_z.view(shape)
