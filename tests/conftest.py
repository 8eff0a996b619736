"""Session fixtures shared by every test folder."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

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


class ZeroRuns(Mapping[int, Path]):
    """One uninterrupted run per ZeRO stage (1, 2, 3), same seed and data, checkpoints at steps 3 and 6;
    each launched the first time a test asks for it (a session running only ZeRO-2 tests pays for one)."""

    def __init__(self, root: Path):
        self.root = root
        self.stages = (1, 2, 3)
        self.launched: set[int] = set()

    def __getitem__(self, stage: int) -> Path:
        if stage not in self.stages:
            raise KeyError(stage)
        run = self.root / f"zero{stage}"
        if stage not in self.launched:
            launch(run, [f"deepspeed.zero_stage={stage}", *ZERO_RUN])
            self.launched.add(stage)
        return run

    def __iter__(self) -> Iterator[int]:
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)


@pytest.fixture(scope="session")
def zero_runs(runs_root) -> ZeroRuns:
    return ZeroRuns(runs_root)


@pytest.fixture(scope="session")
def unclipped_run(runs_root) -> Path:
    """launching.UNCLIPPED_RUN, shared by the norm-only switch's and the grown run's carried-moments tests."""
    run = runs_root / "unclipped"
    launch(run, UNCLIPPED_RUN)
    return run
