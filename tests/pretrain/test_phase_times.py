"""PhaseTimes (pretrain/metrics.py): the training loop's wall time by phase, with a clock the test moves."""
from __future__ import annotations

import json

import pytest

from pretrain import metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(metrics.time, "perf_counter", clock)
    return clock


def test_phases_sum_with_the_rest_to_the_wall_time_and_training_leaves_out_saves_and_validation(clock):
    times = metrics.PhaseTimes()

    def spend(seconds: float) -> str:
        clock.now += seconds
        return "done"

    for _ in range(2):
        assert times.run("step", spend, 1.0) == "done"
        times.run("hook/Validation", spend, 0.5)
        with times("checkpoint"):
            clock.now += 0.25
        clock.now += 0.125  # between phases: nobody's
    summary = times.summary(steps=2, tokens=300)
    assert summary["phases_s"] == {"checkpoint": 0.5, "hook/Validation": 1.0, "step": 2.0, "other": 0.25}
    assert summary["wall_s"] == 3.75
    assert summary["training_s"] == 3.75 - 0.5 - 1.0
    assert summary["tokens_per_s"] == 300 / 2.25


def test_a_phase_that_raises_is_still_charged(clock):
    times = metrics.PhaseTimes()
    with pytest.raises(ValueError):
        with times("data"):
            clock.now += 2.0
            raise ValueError("bad window")
    assert times.seconds["data"] == 2.0


def test_report_writes_timing_json_with_the_rank_count_and_skips_a_run_with_no_steps(clock, tmp_path):
    times = metrics.PhaseTimes()
    times.run("step", lambda: setattr(clock, "now", clock.now + 4.0))
    metrics.report_times(times, tmp_path, steps=0, tokens=0, ranks=2)
    assert not (tmp_path / "timing.json").exists()
    metrics.report_times(times, tmp_path, steps=4, tokens=800, ranks=2)
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert (timing["ranks"], timing["steps"], timing["tokens_per_s"]) == (2, 4, 200.0)
