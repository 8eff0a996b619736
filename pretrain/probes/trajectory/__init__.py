"""Directional structure of training trajectories (docs/methods.md §4): per-group cosine maps of checkpoints and
updates, exact by streaming over checkpoints (stream.py) or live from a random sketch (online.py).

Modules: settings (the `monitors.trajectory` section), groups (parameter -> group), sketch (count sketches),
maps (cosine maps, MDS), stream (checkpoints -> maps), online (the in-training sketch callback), report
(`python -m pretrain.probes.trajectory.report RUN_DIR`: heat-maps and the summary table).
"""
