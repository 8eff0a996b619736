"""Run an experiment spec: `python scripts/run_experiment.py SPEC.yaml --out DIR`, the same as
`python -m experiments SPEC.yaml --out DIR` (see experiments/__main__.py)."""
import sys

from experiments.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
