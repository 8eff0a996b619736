"""Compare runs arm by arm: `python scripts/compare_runs.py RUN_DIR... --out DIR` (experiments/compare.py)."""
import sys

from experiments.compare import main

if __name__ == "__main__":
    sys.exit(main())
