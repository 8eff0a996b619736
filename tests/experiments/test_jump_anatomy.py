"""jump_anatomy on a real 2-rank run: its profile on the final checkpoint equals what the JumpMonitor logged."""
from __future__ import annotations

import json

import pytest

from experiments import jump_anatomy
from experiments.runs import layers_logged

from launching import ZERO_RUN_STEPS, metrics


@pytest.mark.distributed
def test_anatomy_reproduces_the_monitor_on_the_final_checkpoint(zero_runs, tmp_path):
    run = zero_runs[1]
    assert jump_anatomy.main([str(run), "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "anatomy.json").read_text())[str(run)]
    logged = [r for r in metrics(run) if r["step"] == ZERO_RUN_STEPS and "jump/zeta_L" in r][-1]
    n_layers = layers_logged(logged)
    assert row["Psi_L include"] == pytest.approx(logged[f"jump/psi_{n_layers}"], abs=1e-5)
    assert row["zeta_L include"] == pytest.approx(logged["jump/zeta_L"], abs=1e-3)
    assert row["block L moved"] > 0 and row["final-norm mean abs(g - 1)"] > 0  # six steps of training moved both
