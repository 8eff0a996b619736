"""Directional structure of training trajectories (METHODS.md §4): per-group cosine maps of checkpoints and
updates, exact by streaming over checkpoints (stream.py) or live from a random sketch (online.py)."""
from pretrain.trajectory.groups import GRANULARITIES, group_of, group_params
from pretrain.trajectory.maps import Trajectory, cosine_map, grams, mds, qkv_heterogeneity, trajectory_of
from pretrain.trajectory.online import TrajectoryConfig, TrajectorySketch, load_sketches, sketch_trajectory
from pretrain.trajectory.stream import stream_trajectory

__all__ = ["GRANULARITIES", "group_of", "group_params", "Trajectory", "cosine_map", "grams", "mds",
           "qkv_heterogeneity", "trajectory_of", "TrajectoryConfig", "TrajectorySketch", "load_sketches",
           "sketch_trajectory", "stream_trajectory"]
