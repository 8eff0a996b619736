"""Benchmarks: `python -m bench.<name>` (docs/guide.md, "Benchmarks").

Each compares growlm with a baseline side by side in one process or one launch (interleaved rounds, medians),
never against a stored number; `bench.loops` holds the bare PyTorch loop the others measure against. A package
rather than files under scripts/, so they import each other as modules (docs/design.md, "Packages").
"""
