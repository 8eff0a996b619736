"""Downstream evaluation of checkpoints with lm-evaluation-harness (the optional extra `growlm[eval]`).

Modules: settings (what to evaluate; import-light, the run config uses it), tasks (resolve and check tasks
before any model is loaded), run (a checkpoint -> HF model -> lm-eval scores), results (results.json, the
run's eval metrics file, TensorBoard), schedule (the trainer callback), __main__ (the CLI).
"""
from pretrain.probes.lm_eval.settings import LmEvalConfig, LmEvalError, LmEvalSettings

__all__ = ["LmEvalConfig", "LmEvalError", "LmEvalSettings"]
