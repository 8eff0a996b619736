"""µP's coordinate check: `python scripts/coord_check.py [--widths 64 128 256 512] [--out docs/figures/coord_check.png]`
(experiments/coord_check.py)."""
import sys

from experiments.coord_check import main

if __name__ == "__main__":
    sys.exit(main())
