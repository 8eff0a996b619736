"""Atomic file writes (a crash mid-write leaves the old file, or none, never a torn one), and the one reader of
the YAML files users hand growlm (configs, presets, experiment specs), whose errors name the file and line.

In `storage/` so that every package may use it: growth, the experiments and the scripts as well as the trainer.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from settings.errors import UserError


class FileFormatError(UserError, ValueError):
    """A user's file that cannot be read as what it should be; the message names the file and where."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path` (atomic on POSIX). The file gets
    the mode a plain `open` would give it (mkstemp's 0600 would hide it from the user's group)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> None:
    """A matplotlib figure rendered in memory (format from the suffix), then written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """The YAML document in `path` as an omegaconf container (a DictConfig for a mapping); a binary file, a
    YAML syntax error or a missing file raise FileFormatError naming `what`, the path and the line."""
    import yaml
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FileFormatError(f"{what} {path} is not a text file (a binary file such as weights?): give a YAML "
                              "file") from None
    try:
        top = yaml.safe_load(text)
        if top is not None and not isinstance(top, (dict, list)):  # omegaconf would make `{top: null}` of it
            raise FileFormatError(f"{what} {path} holds a YAML {type(top).__name__} ({str(top)[:40]!r}), not a "
                                  "mapping of keys: is it the file you meant?")
        return OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise FileFormatError(f"{what} {path} is not valid YAML{where}: {problem}") from None


def file_in_the_way(path: str | Path) -> Path | None:
    """The file (not folder) at `path` or at the nearest existing parent of it, which would stop a folder being
    made there; None when the folder exists or can be made."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


class OutputFolderError(UserError, FileExistsError):
    """An output folder a command would write into that holds something the command did not write."""


def check_output_folder(out: str | Path, marker: str, flag: str = "--out", ours: tuple[str, ...] = ()) -> None:
    """Refuse an output folder that is a file, or that holds files and not `marker` (the command did not make
    it), naming what it holds; `ours` are names growlm put there first (a detached job's log). Call before any
    work, so a refused folder costs nothing."""
    out = Path(out)
    if (blocker := file_in_the_way(out)) is not None:
        raise OutputFolderError(f"{flag} {out}: {blocker} is a file; give a new or empty folder")
    entries = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if entries and marker not in entries:
        raise OutputFolderError(f"{flag} {out} holds {entries[:5]} and no {marker}: this command did not make it, "
                                "so it writes nothing there; give a new or empty folder")


def claim_output_folder(out: str | Path, marker: str, flag: str = "--out") -> Path:
    """Make `out` this command's folder (checked as `check_output_folder`): `marker` says so to a later run of
    the command, which then replaces its own files there."""
    check_output_folder(out, marker, flag)
    out = Path(out)
    if not (out / marker).is_file():
        atomic_write_text(out / marker, "growlm writes here; re-running the same command replaces its files\n")
    return out
