"""The training objective: the language-model loss plus the sum of the configured regularizers.

The trainer only calls it; what it computes is fixed by the config (`train.loss_chunk`, `data.document_masking`
with its `train.document_attention` kernel, `regularizers`), so validation, monitors and benchmarks share the
exact loss the optimizer sees.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
import torch.nn.functional as F

import regularizers as regs
from model.llama import FusedLoss, Layout, document_layout
from pretrain import dist
from pretrain.config import ConfigError
from pretrain.data.tokenizer import eos_id_of

if TYPE_CHECKING:
    from pretrain.config import Config

Batch = tuple[torch.Tensor, torch.Tensor]


def refuse_unsupported_attention(cfg: "Config", device: torch.device) -> None:
    """Masked flex attention trains only on CUDA: torch's flex_attention has no backward on CPU. Refused at start-up
    (in `--check` too), naming the key."""
    if cfg.data.document_masking and cfg.train.document_attention == "flex" and device.type != "cuda":
        raise ConfigError("train.document_attention=flex trains only on CUDA: torch's flex_attention has no "
                          "backward on CPU; use auto or dense here")


class Objective:
    """lm loss (+ regularizers) of a batch under a model callable (the DeepSpeed engine or a bare Llama)."""

    def __init__(self, cfg: "Config", tokenizer_path: Path):
        self.regularizers = regs.build_regularizers(cfg.regularizers)
        self.need_hidden = any(r.needs_hidden_states for r in self.regularizers)
        self.need_log_z_grad = any(r.needs_log_z_grad for r in self.regularizers)
        self.loss_chunk = cfg.train.loss_chunk
        self.document_masking = cfg.data.document_masking
        self.document_positions = cfg.data.document_positions
        self.document_attention = cfg.train.document_attention
        self.eos_id = eos_id_of(tokenizer_path)  # document boundaries

    def step_normalizer(self, batches: Sequence[Batch], world: int) -> Optional[torch.Tensor]:
        """Under document masking, the mean count of kept tokens per micro-batch over the whole optimizer step
        (every micro-batch of every rank; one all-reduce); None without masking.

        Each micro-batch's loss is then its kept tokens' summed loss over this count, so after DeepSpeed's
        1/grad_accum and the ranks' mean the gradient is that of the step's token mean (as torchtitan
        normalizes), however the batch is split into micro-batches and ranks. A per-micro-batch mean would
        weigh the tokens of micro-batches with many short documents (fewer kept tokens) more."""
        if not self.document_masking:
            return None
        kept = torch.stack([(inputs != self.eos_id).sum() for inputs, _ in batches]).sum().float()
        return dist.all_reduce_sum(kept) / (len(batches) * world)

    def lm_forward(self, model: Any, inputs: torch.Tensor, targets: torch.Tensor, hidden_states: bool = False,
                   normalizer: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Any]:
        """(lm loss, the model's output): the plain head + cross-entropy, or with `train.loss_chunk` the fused
        chunked head (no full logits; the output carries per-token log Z instead). With data.document_masking,
        attention stays within documents and predictions from an EOS (of the next document's first token) are
        left out: the loss is the kept tokens' sum over `normalizer` (`step_normalizer`, in training), or their
        mean in this batch when it is None (validation, probes)."""
        layout, keep = None, None
        if self.document_masking:
            documents, positions = document_layout(inputs, self.eos_id)
            layout = Layout(documents, positions if self.document_positions == "document" else None,
                            self.document_attention)
            keep = (inputs != self.eos_id).float()
        if self.loss_chunk:
            out = model(inputs, layout=layout, fused_loss=FusedLoss(targets, self.loss_chunk, self.need_log_z_grad),
                        return_hidden_states=hidden_states)
            token_loss = out.token_loss
        else:
            out = model(inputs, layout=layout, return_hidden_states=hidden_states)
            if keep is None:  # the fused mean: the numerics every unmasked run has always had
                return F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten()), out
            token_loss = F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        if keep is None:
            return token_loss.mean(), out
        keep = keep.view(-1)
        denominator = keep.sum().clamp(min=1.0) if normalizer is None else normalizer
        return (token_loss.view(-1) * keep).sum() / denominator, out

    def __call__(self, model: Any, batch: Batch, step: int,
                 normalizer: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(lm loss + sum of regularizers, detached metrics); hidden states are requested only when a regularizer
        needs them. `step` is the number of completed optimizer steps (regularizer warm-ups read it); the lm
        loss's `normalizer` is `lm_forward`'s. Regularizers average over this micro-batch's tokens (each
        micro-batch weighs the same), whatever the lm loss's normalization."""
        inputs, targets = batch
        lm_loss, out = self.lm_forward(model, inputs, targets, self.need_hidden, normalizer)
        total = lm_loss
        metrics = {"lm_loss": lm_loss.detach()}
        if self.regularizers:
            reg_inputs = regs.LossInputs(tokens=inputs, targets=targets, mask=None, logits=out.logits,
                                         log_z=out.log_z, hidden_states=out.hidden_states,
                                         final_normed=out.final_normed, step=step)
            for reg in self.regularizers:
                term, reg_metrics = reg(reg_inputs)
                total = total + term
                metrics[f"reg/{reg.name}"] = term.detach()
                metrics.update({f"reg/{reg.name}/{k}": torch.as_tensor(v) for k, v in reg_metrics.items()})
        metrics["loss"] = total.detach()
        return total, metrics
