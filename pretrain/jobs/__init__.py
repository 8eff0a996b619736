"""Periodic jobs on saved checkpoints: they read a checkpoint from disk and write `<run>/jobs/<job>/step_<N>/`.

A job never touches the live engine and never writes into a checkpoint, so it can run beside training (a
detached process started by `pretrain.jobs.detached`) or after it (`python -m pretrain.jobs.<job>`).

Modules: schedule (the `every`/`mode` settings), cli (settings dataclass <-> flags), location (where a job
reads and writes), detached (the job base every job's callback subclasses); one package per job.
"""
