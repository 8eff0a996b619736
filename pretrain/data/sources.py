"""Turn `data.source` into a `datasets.Dataset` of non-empty documents, checking paths and fields first."""
from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pretrain.data.config import DataConfig
from pretrain.data.corpus import embedded_corpus
from pretrain.data.errors import DataError

if TYPE_CHECKING:  # imported where documents are loaded: a rank reading a cached build never needs it (~0.8 s)
    import datasets

log = logging.getLogger(__name__)

# extension -> datasets builder; a .txt file is split into documents at blank lines (paragraphs), so a
# single large text file still yields many documents and a val split.
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_TEXT_TYPES = ("string", "large_string")


@dataclass(frozen=True)
class Source:
    """A resolved source: local files or a hub dataset, plus a fingerprint that changes when the data does."""

    files: tuple[Path, ...] = ()
    hub: Optional[tuple[str, Optional[str]]] = None  # (name, config)

    def fingerprint(self, cfg: DataConfig) -> str:
        """Paths + sizes + mtimes for files (cheap: no reading); name/config/split for the hub."""
        if self.hub:
            parts: list = ["hf", *self.hub, cfg.hf_split]
        else:
            parts = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in self.files]
        return json.dumps([parts, cfg.text_field])


def resolve_source(cfg: DataConfig) -> Source:
    """Check the source exists and is readable by a supported builder, without loading anything."""
    if cfg.source == "embedded":
        return Source(files=(embedded_corpus(cfg.cache_dir, cfg.embedded_max_bytes),))
    if cfg.source.startswith("hf:"):
        name, _, config = cfg.source[3:].partition(":")
        return Source(hub=(name, config or None))
    files: list[Path] = []
    for part in (p.strip() for p in cfg.source.split(",")):
        if not part:
            continue
        if any(c in part for c in "*?["):
            matches = sorted(glob.glob(part, recursive=True))
            if not matches:
                raise DataError(f"data.source: glob {part!r} matches no files")
            files += [Path(m) for m in matches]
        elif Path(part).is_file():
            files.append(Path(part))
        else:
            raise DataError(f"data.source: no such file {part!r}"
                            + (" (a directory; use a glob such as dir/*.jsonl)" if Path(part).is_dir() else ""))
    for path in files:
        if path.suffix.lower() not in BUILDERS:
            raise DataError(f"data.source: {str(path)!r} has unsupported extension {path.suffix!r}; "
                            f"supported: {', '.join(BUILDERS)}")
    return Source(files=tuple(p.resolve() for p in files))


def load_documents(cfg: DataConfig, source: Source) -> tuple[datasets.Dataset, dict]:
    """Load the source as a Dataset with one column, cfg.text_field, dropping empty and None texts.

    Returns the dataset and counts (records read, records skipped).
    """
    import datasets

    if source.files and not any(p.stat().st_size for p in source.files):
        raise DataError(f"data.source={cfg.source!r} holds no text: every file is empty")
    cache = str(Path(cfg.cache_dir) / "hf")
    parts = []
    quiet = logging.getLogger("datasets")  # its reader logs the parse error itself: ours names it, once
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        if source.hub:
            name, config = source.hub
            parts.append(datasets.load_dataset(name, config, split=cfg.hf_split, cache_dir=cache))
        else:
            by_builder: dict[str, list[str]] = {}
            for path in source.files:
                by_builder.setdefault(BUILDERS[path.suffix.lower()], []).append(str(path))
            for builder, files in sorted(by_builder.items()):
                kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
                parts.append(datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache,
                                                   **kwargs))
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported as bad input, with its cause
        cause = _reader_error(exc)  # datasets wraps the parser's error (it names the bad row) in a generic one
        raise DataError(f"data.source={cfg.source!r} could not be read: {type(cause).__name__}: "
                        f"{str(cause).splitlines()[0] if str(cause) else ''}") from exc
    finally:
        quiet.setLevel(level)
    if sum(len(d) for d in parts) == 0:
        raise DataError(f"data.source={cfg.source!r} holds no text: 0 records")
    for ds in parts:
        _check_text_field(cfg, ds)
    ds = datasets.concatenate_datasets([d.select_columns([cfg.text_field]) for d in parts])
    records = len(ds)
    field = cfg.text_field
    ds = ds.filter(lambda batch: [bool(t and t.strip()) for t in batch[field]], batched=True,
                   num_proc=map_procs(cfg, ds), desc="drop empty documents")
    skipped = records - len(ds)
    if skipped:
        log.warning("data: skipped %d of %d records with empty or missing %r", skipped, records, field)
    if len(ds) == 0:
        raise DataError(f"data.source={cfg.source!r} holds no text: {records} records, none with a non-empty "
                        f"{field!r} field")
    return ds, {"records": records, "skipped_empty": skipped}


def _reader_error(exc: BaseException) -> BaseException:
    """The first error of the chain below datasets' generic DatasetGenerationError: the parser's own, which
    names the row (a fallback parser raised while handling it says less)."""
    seen: set[int] = set()
    while type(exc).__name__ == "DatasetGenerationError" and id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


def _check_text_field(cfg: DataConfig, ds: datasets.Dataset) -> None:
    if cfg.text_field not in ds.column_names:
        raise DataError(f"data.text_field={cfg.text_field!r} is not a field of {cfg.source!r}; "
                        f"fields: {', '.join(ds.column_names) or '(none)'}")
    dtype = getattr(ds.features[cfg.text_field], "dtype", None)
    if dtype not in _TEXT_TYPES:
        raise DataError(f"data.text_field={cfg.text_field!r} holds {ds.features[cfg.text_field]}, not text")


def map_procs(cfg: DataConfig, ds: datasets.Dataset) -> Optional[int]:
    """datasets.map processes: None (in-process) when there is too little work to pay for worker start-up."""
    procs = min(cfg.num_proc, len(ds))
    return procs if procs > 1 else None
