"""`python -m pretrain CONFIG --check` refuses what the ranks would fail on, in one line, before any rank starts
and before preparing data it would not need (issue 37's silent cases). In-process: no rank, no launch."""
from __future__ import annotations

import pytest

from pretrain.__main__ import main

pytestmark = pytest.mark.usefixtures("one_thread")


def check(tmp_path, capsys, *overrides: str) -> str:
    """The single error line of a refused --check (asserting exit 2 and that nothing was written)."""
    code = main(["configs/tiny.yaml", f"run.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                 *overrides, "--check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
    return err[0]


def test_a_missing_mixture_source_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert f"data source '{missing}' does not exist" in check(tmp_path, capsys, f"data.sources=[{{path: {missing}}}]")


def test_a_raw_text_file_as_a_mixture_source_is_refused(tmp_path, capsys):
    raw = tmp_path / "a.jsonl"
    raw.write_text('{"text": "hello"}\n')
    line = check(tmp_path, capsys, f"data.sources=[{{path: {raw}}}]")
    assert f"data source '{raw}' is raw text" in line and "python -m pretrain.data prepare" in line


def test_a_missing_init_from_is_named_before_any_data_work(tmp_path, capsys):
    missing = tmp_path / "grown"
    assert f"checkpoint '{missing}' does not exist" in check(tmp_path, capsys, f"train.init_from={missing}")


def test_an_init_from_of_another_shape_is_named(tmp_path, capsys):
    from model import Llama
    from pretrain.config import load_config
    from storage.weights import save_weights

    small = load_config("configs/tiny.yaml", ["model.n_layers=2"]).model
    save_weights(tmp_path / "small", small, Llama(small).state_dict())
    err = check(tmp_path, capsys, f"train.init_from={tmp_path / 'small'}")
    assert "holds a model of another shape (model.n_layers: source 2, config 4)" in err  # the field, not two reprs
    assert "ModelConfig(" not in err


def test_a_carry_without_carry_pt_is_named(tmp_path, capsys):
    from model import Llama
    from pretrain.config import load_config
    from storage.weights import save_weights

    model = load_config("configs/tiny.yaml").model
    save_weights(tmp_path / "grown", model, Llama(model).state_dict())
    line = check(tmp_path, capsys, f"train.init_from={tmp_path / 'grown'}", "train.carry.optimizer=true")
    assert "carries no optimizer state (carry.pt)" in line


def test_flags_may_come_before_the_overrides(capsys):
    """Issue 51: `--print-config key=val` and `--check` before the overrides were "unrecognized arguments"."""
    assert main(["configs/tiny.yaml", "--print-config", "train.steps=7", "model.n_layers=3"]) == 0
    printed = capsys.readouterr().out
    assert "  steps: 7\n" in printed and "  n_layers: 3\n" in printed


def test_masked_flex_attention_is_refused_by_the_check_as_the_ranks_would(tmp_path, capsys):
    """Issue 51: `--check` passed it on CPU and every rank then refused it."""
    line = check(tmp_path, capsys, "data.document_masking=true", "train.document_attention=flex")
    assert "train.document_attention=flex trains only on CUDA" in line
