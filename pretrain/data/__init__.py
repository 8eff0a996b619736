"""Data pipeline: corpus -> sentencepiece tokenizer -> packed, cached windows -> resumable step sampler."""
from pretrain.data.config import DataConfig, check_seq_len
from pretrain.data.dataset import PackedData, prepare_data
from pretrain.data.errors import DataError
from pretrain.data.sampler import StepSampler, get_batch

__all__ = ["DataConfig", "DataError", "PackedData", "StepSampler", "check_seq_len", "get_batch", "prepare_data"]
