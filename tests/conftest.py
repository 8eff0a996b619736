"""Session fixtures shared by every test folder."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from filelock import FileLock

from launching import UNCLIPPED_RUN, ZERO_RUN, launch

pytest_plugins = ["process_markers", "pytester"]


@pytest.fixture(scope="module")
def one_thread():
    """In-process tiny models: thread hand-offs cost more than tiny matmuls save, and on a loaded machine (other
    tests, launched ranks) they cost 10x the run time; opt in with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def shared_runs_root(tmp_path_factory) -> Path:
    """Where the reference runs that tests only read live: one folder for every pytest-xdist worker of the session
    (their basetemps share a parent), so each run is launched once, by the first worker that asks for it."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared_runs"
    root.mkdir(exist_ok=True)
    return root


def launched_once(run: Path, overrides: list[str]) -> Path:
    """`launch(run, overrides)` unless a worker already finished it; a worker that finds it under way waits."""
    done = run.with_name(run.name + ".done")
    with FileLock(str(run) + ".lock"):
        if not done.exists():
            shutil.rmtree(run, ignore_errors=True)  # what a failed launch of another worker left
            launch(run, overrides)
            done.touch()
    return run


class ZeroRuns(Mapping[int, Path]):
    """One uninterrupted run per ZeRO stage (1, 2, 3), same seed and data, checkpoints at steps 3 and 6;
    each launched the first time a test asks for it (a session running only ZeRO-2 tests pays for one)."""

    def __init__(self, root: Path):
        self.root = root
        self.stages = (1, 2, 3)

    def __getitem__(self, stage: int) -> Path:
        if stage not in self.stages:
            raise KeyError(stage)
        return launched_once(self.root / f"zero{stage}", [f"deepspeed.zero_stage={stage}", *ZERO_RUN])

    def __iter__(self) -> Iterator[int]:
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)


@pytest.fixture(scope="session")
def zero_runs(shared_runs_root) -> ZeroRuns:
    return ZeroRuns(shared_runs_root)


@pytest.fixture(scope="session")
def unclipped_run(shared_runs_root) -> Path:
    """launching.UNCLIPPED_RUN, shared by the norm-only switch's and the grown run's carried-moments tests."""
    return launched_once(shared_runs_root / "unclipped", UNCLIPPED_RUN)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files that start the most processes first (their order within a file kept): pytest-xdist's `loadfile`
    hands files out in this order, so the long ones start early and the short ones fill the end on both workers."""
    launches: dict[str, int] = {}
    for item in items:
        markers = {m.name for m in item.iter_markers()}
        launches[item.path] = launches.get(item.path, 0) + bool(markers & {"distributed", "process"})
    items.sort(key=lambda item: -launches[item.path])
