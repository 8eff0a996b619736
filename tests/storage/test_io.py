"""Atomic writes (storage/io.py): a failure mid-write leaves the previous file whole and no temp file behind."""
from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from storage.io import (
    OutputFolderError,
    atomic_save_figure,
    atomic_write_text,
    check_output_folder,
    claim_output_folder,
)


class FailingFigure:
    """Renders half an image, then fails: a full disk, a killed renderer."""

    def savefig(self, buf, **kwargs) -> None:
        buf.write(b"\x89PNG half")
        raise OSError("no space left on device")


def test_a_figure_is_written_whole_and_a_failed_one_leaves_the_old_file(tmp_path):
    path = tmp_path / "plot.png"
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    atomic_save_figure(fig, path, dpi=50)
    first = path.read_bytes()
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and len(first) > 1000
    with pytest.raises(OSError, match="no space"):
        atomic_save_figure(FailingFigure(), path)
    assert path.read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_the_format_follows_the_suffix(tmp_path):
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    atomic_save_figure(fig, tmp_path / "plot.svg")
    assert (tmp_path / "plot.svg").read_text().lstrip().startswith("<?xml")


def test_text_replaces_the_old_file_in_one_step(tmp_path):
    path = tmp_path / "report.md"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_an_output_folder_is_claimed_new_or_empty_and_reused_only_by_its_command(tmp_path):
    new = claim_output_folder(tmp_path / "new", ".growlm-x")
    assert sorted(p.name for p in new.iterdir()) == [".growlm-x"]
    (new / "report.md").write_text("old report")
    claim_output_folder(new, ".growlm-x")  # the command's own folder: reused, its files left to be replaced
    assert (new / "report.md").read_text() == "old report"
    with pytest.raises(OutputFolderError, match=r"holds \['.growlm-x', 'report.md'\] and no .growlm-y"):
        claim_output_folder(new, ".growlm-y")  # another command's folder
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's notes")
    with pytest.raises(OutputFolderError, match=r"--out .*mine holds \['notes.txt'\]"):
        claim_output_folder(mine, ".growlm-x")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with pytest.raises(OutputFolderError, match="is a file"):
        check_output_folder(mine / "notes.txt", ".growlm-x")


def test_an_atomic_write_gets_the_mode_a_plain_open_would(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o640
