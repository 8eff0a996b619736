"""Session fixtures shared by every test folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from launching import ZERO_RUN, launch


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
