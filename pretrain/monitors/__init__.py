"""In-training monitors: callbacks built from the `monitors:` config section (registered in pretrain/plugins.py).

settings (the sections' dataclasses; imported by the run config, so no torch), jump (the jump profile).
The trajectory sketch lives with the rest of the trajectory code (pretrain/trajectory/online.py).
"""
