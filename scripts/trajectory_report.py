"""Trajectory maps of a run: `python scripts/trajectory_report.py RUN_DIR --out DIR`, the same as
`python -m pretrain.probes.trajectory.report` (see there)."""
import sys

from pretrain.probes.trajectory.report import main

if __name__ == "__main__":
    sys.exit(main())
