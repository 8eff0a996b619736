"""Session fixtures shared by every test folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from launching import UNCLIPPED_RUN, ZERO_RUN, launch


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
def zero_runs(runs_root) -> dict[int, Path]:
    """One uninterrupted run per ZeRO stage, same seed and data; checkpoints at steps 3 and 6."""
    runs = {}
    for stage in (1, 2, 3):
        run = runs_root / f"zero{stage}"
        launch(run, [f"deepspeed.zero_stage={stage}", *ZERO_RUN])
        runs[stage] = run
    return runs


@pytest.fixture(scope="session")
def unclipped_run(runs_root) -> Path:
    """launching.UNCLIPPED_RUN, shared by the norm-only switch's and the grown run's carried-moments tests."""
    run = runs_root / "unclipped"
    launch(run, UNCLIPPED_RUN)
    return run
