"""The data a run trains on, built from config: the packed windows (or a mixture of pre-tokenized sources,
or a token stream), the step sampler that deals them out to ranks, and batches on the rank's device."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pretrain import dist
from pretrain.data.corpora import prepare_mixture
from pretrain.data.dataset import PackedData, prepare_data
from pretrain.data.mixture import MixtureSampler
from pretrain.data.sampler import StepSampler, get_batch

if TYPE_CHECKING:
    from pretrain.config import Config


def load_data(cfg: "Config") -> PackedData:
    """Rank 0 builds the tokenizer and caches first; the others then hit the cache. Pre-tokenized sources
    (data.sources) are only opened, on every rank at once."""
    if cfg.data.sources:
        return prepare_mixture(cfg.data, cfg.model.vocab_size)
    if dist.is_main():
        data = prepare_data(cfg.data, cfg.model.vocab_size)
    dist.barrier()
    if not dist.is_main():
        data = prepare_data(cfg.data, cfg.model.vocab_size)
    return data


def build_sampler(cfg: "Config", data: PackedData) -> Any:
    """The resumable sampler for this rank: a token stream's (data.streaming, which also stages the windows
    into `data.train`), a mixture's weighted one, or the plain shuffled one."""
    t, world, rank = cfg.train, dist.world_size(), dist.rank()
    if cfg.data.streaming:
        from pretrain.data.streaming import StagedWindows, StreamSampler, TokenStream

        stream = TokenStream(cfg.data, data.tokenizer_path, rank, world, cfg.run.seed)
        sampler = StreamSampler(stream, t.micro_batch_size, t.grad_accum)
        data.train = StagedWindows(sampler)
        return sampler
    if data.mixture:
        return MixtureSampler(data.mixture, t.micro_batch_size, t.grad_accum, world, rank, cfg.run.seed)
    return StepSampler(len(data.train), t.micro_batch_size, t.grad_accum, world, rank, cfg.run.seed)


def device_batch(windows: Any, indices: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of these window indices, on `device`."""
    tokens = get_batch(windows, indices)
    if device.type == "cuda":  # non_blocking only overlaps the copy from page-locked memory
        tokens = tokens.pin_memory()
    tokens = tokens.to(device, non_blocking=True)
    return tokens[:, :-1], tokens[:, 1:]
