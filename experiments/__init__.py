"""Experiments over training runs: specs of arms x seeds and LAG measurements, run through the launcher and
reported with the statistics a reviewer reads (docs/design.md, "Experiments").

Above every other package: it starts runs (`python -m launch`), grows models (growth) and reads what runs wrote
(storage); nothing imports it. `python -m experiments SPEC --out DIR` runs a spec; `scripts/compare_runs.py`
compares runs by hand.
"""
