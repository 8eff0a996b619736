"""Periodic jobs on saved checkpoints: they read a checkpoint from disk and write `<run>/jobs/<job>/step_<N>/`.

A job never touches the live engine and never writes into a checkpoint, so it can run beside training (a
detached process started by `pretrain.jobs.schedule`) or after it (`python -m pretrain.jobs.<job>`).
"""
