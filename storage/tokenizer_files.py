"""Which files are a model's tokenizer, so a run, a checkpoint, a grown or an exported folder carry it along.

Only file names and copies: a sentencepiece `tokenizer.model`, or a Hugging Face tokenizer's tokenizer.json and
its configs. Loading and encoding stay with the data pipeline; growth and the scripts need just these, and
nothing of the trainer.
"""
from __future__ import annotations

from pathlib import Path

SENTENCEPIECE_FILE = "tokenizer.model"
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
"""What an HF tokenizer folder holds for `AutoTokenizer`; tokenizer.json is the one required."""


def is_hf_tokenizer(path: str | Path) -> bool:
    path = Path(path)
    return (path / FILES[0]).is_file() if path.is_dir() else path.suffix == ".json"


def folder_of(path: str | Path) -> Path:
    """The folder of an HF tokenizer given as a folder or as its tokenizer.json."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def files(path: str | Path) -> dict[str, Path]:
    """name -> file of the HF tokenizer's files present in its folder."""
    folder = folder_of(path)
    return {name: folder / name for name in FILES if (folder / name).is_file()}


def tokenizer_files(path: str | Path) -> dict[str, Path]:
    """The files that are the tokenizer, by the names they keep in a run, a checkpoint and an exported folder
    (`tokenizer.model`, or an HF tokenizer's tokenizer.json and its configs)."""
    return files(path) if is_hf_tokenizer(path) else {SENTENCEPIECE_FILE: Path(path)}


def find_tokenizer(folder: str | Path) -> Path | None:
    """The tokenizer a run, checkpoint, weights or model folder carries (a `tokenizer.model`, or the folder
    itself when it holds an HF tokenizer.json), or None."""
    folder = Path(folder)
    if (folder / SENTENCEPIECE_FILE).is_file():
        return folder / SENTENCEPIECE_FILE
    return folder if is_hf_tokenizer(folder) and folder.is_dir() else None


def copy_tokenizer(source: str | Path, folder: str | Path) -> Path:
    """Copy a tokenizer's files into `folder` (each written whole, then renamed); returns what
    `data.tokenizer` should name there."""
    folder = Path(folder)
    for name, file in tokenizer_files(source).items():
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(file.read_bytes())
        tmp.rename(folder / name)
    return find_tokenizer(folder)
