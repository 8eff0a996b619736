"""Jobs scheduled by a real (single-process) training run: an output per checkpoint, training unaffected."""
from __future__ import annotations

import json

import pytest

from launching import launch, losses

SHORT = ["train.steps=4", "checkpoint.every=2", "eval.every=0", "monitors.jump.every=0"]
CHEAP_PEELING = ["jobs.peeling.every=1", "jobs.peeling.mode=inline", "jobs.peeling.variants=[fp]",
                 "jobs.peeling.permutations=[forward]", "jobs.peeling.offsets=[0,1]", "jobs.peeling.steps=5",
                 "jobs.peeling.calib_windows=2", "jobs.peeling.batch_windows=2"]
LM_EVAL = ["jobs.lm_eval.every=1", "jobs.lm_eval.mode=inline", "jobs.lm_eval.tasks=[growlm_capitals]",
           "jobs.lm_eval.limit=8"]


@pytest.mark.numerics
@pytest.mark.process
@pytest.mark.slow  # two runs, one with inline lm-eval and peeling jobs: ~45 s
def test_inline_jobs_write_per_checkpoint_and_leave_training_unchanged(runs_root):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install 'growlm[eval]'")
    plain, with_jobs = runs_root / "no_jobs", runs_root / "with_jobs"
    launch(plain, SHORT, ranks=None)
    launch(with_jobs, [*SHORT, *CHEAP_PEELING, *LM_EVAL], ranks=None)
    assert losses(with_jobs) == losses(plain)
    for step in (2, 4):
        bounds = json.loads((with_jobs / "jobs" / "peeling" / f"step_{step}" / "bounds.json").read_text())
        assert bounds and "model_loss" in json.dumps(bounds)
    scores = [json.loads(line) for line in
              (with_jobs / "jobs" / "lm_eval" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in scores] == [2, 4]
    assert all(0.0 <= s["eval/growlm_capitals/acc"] <= 1.0 for s in scores)
