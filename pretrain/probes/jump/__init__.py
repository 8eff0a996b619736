"""The jump probe (docs/methods.md §1): the per-layer displacement profile Psi_1..Psi_L and the jump strength
zeta_L, in training and on any model folder.

settings (the `monitors.jump` section; imported by the run config, so no torch), callback (the in-training
monitor), profile (`python -m pretrain.probes.jump.profile MODEL_DIR...`: the same profile of Hugging Face folders).
The metric itself is regularizers/jump.py's, shared with JREG; the cross-run anatomy report is
experiments/jump_anatomy.py.
"""
