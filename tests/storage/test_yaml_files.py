"""The one reader of users' YAML files: a binary file, a syntax error or a missing file is one line naming the
file and where, at every entry point that reads one (issue 37)."""
from __future__ import annotations

import pytest

from experiments.__main__ import main as run_spec
from pretrain.config import ConfigError, load_config
from storage.io import FileFormatError, read_yaml

BAD = {
    "binary.yaml": (b"\x89safetensors\x00\xff\xfe", "is not a text file"),
    "tab.yaml": (b"train:\n\tsteps: 3\n", "is not valid YAML at line 2, column 1"),
    "bracket.yaml": (b"regularizers: [{name: jreg\n", "is not valid YAML at line 2"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_yaml_file_is_named_with_its_line(tmp_path, name):
    data, message = BAD[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(FileFormatError, match=message) as err:
        read_yaml(tmp_path / name, "config file")
    assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(BAD))
def test_the_run_config_and_a_model_file_refuse_it_as_a_config_error(tmp_path, name):
    data, message = BAD[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / name)
    with pytest.raises(ConfigError, match=rf"model='{tmp_path / name}'.*{message}"):
        load_config(None, [f"model={tmp_path / name}"])


def test_an_experiment_spec_with_a_syntax_error_names_its_file_not_a_string(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(BAD["tab.yaml"][0])
    assert run_spec([str(spec), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(spec) in err and "line 2" in err and "<unicode string>" not in err
    assert not (tmp_path / "out").exists()


def test_a_missing_file_and_a_folder_are_named(tmp_path):
    with pytest.raises(FileFormatError, match="does not exist"):
        read_yaml(tmp_path / "none.yaml")
    with pytest.raises(FileFormatError, match="it is a folder"):
        read_yaml(tmp_path)
