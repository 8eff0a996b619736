"""Where a run's training-loop wall time goes, phase by phase: what a launched run pays beyond the step itself
(data, collectives, hooks, logging, checkpoints). The trainer wraps each phase; rank 0 writes the totals to
`timing.json` in the run directory at the end of training, which `scripts/bench_launched.py` reads.

Host wall time (perf_counter): on a GPU, work the host queued shows up in whichever phase waits for it (the
metrics' `.tolist()` on log steps), so read GPU figures as where the host spent its time.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EXCLUDED = ("checkpoint", "hook/Validation")
"""Phases a training throughput leaves out (reported apart): saves and held-out evaluation."""


class PhaseTimes:
    """Seconds per named phase, summed over the steps of one `fit` (phases must not nest)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def summary(self, steps: int, tokens: int) -> dict[str, Any]:
        """Totals, the loop's wall time, the unattributed rest, and the throughput over the training phases."""
        wall = time.perf_counter() - self._start
        phases = dict(sorted(self.seconds.items()))
        phases["other"] = max(0.0, wall - sum(phases.values()))
        training = wall - sum(phases.get(name, 0.0) for name in EXCLUDED)
        return {"steps": steps, "tokens": tokens, "wall_s": wall, "training_s": training,
                "tokens_per_s": tokens / training if training > 0 else float("nan"), "phases_s": phases}


def describe(summary: dict[str, Any]) -> str:
    """One log line: the largest phases as shares of the loop's wall time."""
    wall = summary["wall_s"] or float("nan")
    shares = sorted(summary["phases_s"].items(), key=lambda kv: -kv[1])
    return " ".join(f"{name}={seconds / wall:.1%}" for name, seconds in shares if seconds / wall >= 0.005)
