"""Where each run's final-layer jump lives: `python scripts/jump_anatomy.py RUN_DIR... --out DIR`
(experiments/jump_anatomy.py)."""
import sys

from experiments.jump_anatomy import main

if __name__ == "__main__":
    sys.exit(main())
