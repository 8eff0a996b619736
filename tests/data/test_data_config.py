"""DataConfig: bad values are refused with the key's name, also when they arrive through omegaconf."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pretrain.data import DataConfig, DataError, check_seq_len, prepare_data


@pytest.mark.parametrize("overrides, words", [
    ({"seq_len": 0}, ["data.seq_len=0", "> 0"]),
    ({"seq_len": "long"}, ["data.seq_len", "must be a number"]),
    ({"tokenizer_type": "wordpiece"}, ["data.tokenizer_type", "bpe", "unigram"]),
    ({"val_fraction": 0.0}, ["data.val_fraction", "(0, 1)"]),
    ({"num_proc": -1}, ["data.num_proc"]),
    ({"source": "hf:"}, ["data.source", "hf:<dataset name>"]),
])
def test_bad_values_name_the_key(overrides, words):
    with pytest.raises(DataError) as err:
        DataConfig(**overrides)
    assert all(w in str(err.value) for w in words)


def test_merged_omegaconf_node_is_validated_by_prepare_data(tmp_path):
    node = OmegaConf.merge(OmegaConf.structured(DataConfig), {"seq_len": -4, "cache_dir": str(tmp_path)})
    with pytest.raises(DataError, match="data.seq_len"):
        prepare_data(node, 512)


def test_unknown_key_is_an_error_in_the_structured_config():
    with pytest.raises(Exception, match="seq_length"):
        OmegaConf.merge(OmegaConf.structured(DataConfig), {"seq_length": 64})


def test_seq_len_longer_than_the_model_names_both_keys():
    check_seq_len(DataConfig(seq_len=256), 256)
    with pytest.raises(DataError, match=r"data.seq_len=512.*model.max_seq_len=256"):
        check_seq_len(DataConfig(seq_len=512), 256)
