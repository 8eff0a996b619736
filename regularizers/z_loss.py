"""PaLM's z-loss: keep the softmax normalizer log Z near 0 so bf16 logits do not drift and blow up."""
from __future__ import annotations

import torch
from torch import Tensor

from regularizers.base import LossInputs, Regularizer
from regularizers.registry import register
from regularizers.tokens import compute_dtype, masked_mean


@register("z_loss")
class ZLoss(Regularizer):
    """mean over real tokens of (logsumexp(logits))^2; PaLM's coefficient 1e-4 is the default weight.

    Metric: log_z, the mean log normalizer (its drift is what the penalty prevents).
    """

    needs_logits = False  # the fused loss head hands over log Z itself
    needs_log_z_grad = True

    weight: float = 1e-4

    def penalty(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        log_z = inputs.log_z
        if log_z is None:
            log_z = torch.logsumexp(inputs.logits.to(compute_dtype(inputs.logits)), dim=-1)
        return masked_mean(log_z.square(), inputs.mask), {"log_z": masked_mean(log_z.detach(), inputs.mask)}
