"""A pytest plug-in that keeps the cost markers honest: a test whose setup or body starts a process must be
marked `process` (any process: a CLI, a detached job, a single-process run) or `distributed` (ranks through
the deepspeed launcher), and one that launches ranks must be marked `distributed`. The fast loop
(`-m "not distributed and not process and not slow"`) then starts no process at all.

It records every subprocess.Popen and multiprocessing start while a test's setup (its fixtures, shared
session runs included) or body runs, and fails a test whose markers do not cover what it started."""
from __future__ import annotations

import multiprocessing.process
import platform
import subprocess
from typing import Any

import pytest

_started: list[str] = []


def _describe(args: Any) -> str:
    return args if isinstance(args, str) else " ".join(map(str, args))


def _install_recorders() -> None:
    popen_init, process_start = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start

    def recording_popen_init(self, args, *rest, **kwargs):
        _started.append(_describe(args))
        popen_init(self, args, *rest, **kwargs)

    def recording_process_start(self):
        _started.append(f"multiprocessing {self.name}")
        process_start(self)

    subprocess.Popen.__init__ = recording_popen_init
    multiprocessing.process.BaseProcess.start = recording_process_start


def launches_ranks(command: str) -> bool:
    """A `python -m launch` or `deepspeed` command that is not a --dry-run: it starts (or tries to) ranks."""
    words = command.split()
    launcher = ("-m" in words and "launch" in words) or (words and words[0].endswith("deepspeed"))
    return bool(launcher) and "--dry-run" not in words


def missing_marker(markers: set[str], started: list[str]) -> str | None:
    """Why these markers do not cover the processes started, or None when they do."""
    if not started:
        return None
    if any(launches_ranks(c) for c in started) and "distributed" not in markers:
        return "launches ranks through the deepspeed launcher but is not marked `distributed`"
    if not markers & {"distributed", "process"}:
        return "starts a process but is marked neither `process` nor `distributed`"
    return None


def warm_one_time_work() -> None:
    """Run, before recording starts, what starts a process once per interpreter or once per machine, so it is
    never charged to whichever test happens to come first (under xdist that differs from worker to worker):
    platform.processor() runs `uname -p` once and caches it; matplotlib's first import on a machine (an empty
    MPLCONFIGDIR) builds its font cache with `fc-list`."""
    platform.processor()
    import matplotlib.font_manager  # noqa: F401  (builds or loads the font cache on import)


def pytest_configure(config: pytest.Config) -> None:
    warm_one_time_work()
    _install_recorders()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    started = list(_started)
    _started.clear()
    if call.when in ("setup", "call") and report.passed:
        reason = missing_marker({m.name for m in item.iter_markers()}, started)
        if reason:
            report.outcome = "failed"
            report.longrepr = f"{item.nodeid} {reason}; it started: {started[:3]}"
    return report
