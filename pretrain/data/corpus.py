"""The embedded default corpus: real text every Python install carries, so a run needs no download.

Documents are Python's pydoc topics (English prose about the language, sorted by topic name) followed by
the standard library's top-level *.py modules (code, sorted by file name), each one document, up to a size
cap. The corpus is written once to a jsonl file in the cache and then read like any local jsonl.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def _documents() -> Iterator[tuple[str, str]]:
    """(name, text) pairs in a fixed order; a stdlib module that is not UTF-8 is skipped."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"pydoc:{name}", topics[name]
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            yield f"stdlib:{path.name}", path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("embedded corpus: skipping %s (%s)", path, exc)


def embedded_corpus(cache_dir: str | Path, max_bytes: int) -> Path:
    """Write the embedded corpus (once) and return its jsonl path.

    The file name carries the Python version, since the stdlib's sources differ between versions.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    path = Path(cache_dir) / "corpus" / f"embedded-py{version}-{max_bytes}.jsonl"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    total = docs = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for name, text in _documents():
            size = len(text.encode("utf-8"))
            if total + size > max_bytes:
                break
            f.write(json.dumps({"text": text, "name": name}, ensure_ascii=False) + "\n")
            total += size
            docs += 1
    os.replace(tmp, path)
    log.info("embedded corpus: %d documents, %d bytes -> %s", docs, total, path)
    return path
