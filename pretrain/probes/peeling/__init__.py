"""Peeling bounds (docs/methods.md §3): our reconstruction of "Trust, but Verify: Peeling Low-Bit Transformer
Networks for Training Monitoring" (arXiv 2605.02853).

Each block is refitted locally against the trained model's intermediate outputs (its own, a later one, or in
swapped roles), in full precision or low-bit; the spliced model's loss is a reference bound. A bound that
removes a block yet reaches the model's loss exposes a layer the aggregate loss hides as under-optimized.

Modules: plan (which fits), fit (adam / lstsq; binary / k-bit weights from model/quant.py), bounds (the pure core),
report (json / png / table), job (a checkpoint on disk -> outputs), __main__ (the CLI).
"""
from pretrain.probes.peeling.errors import PeelingError
from pretrain.probes.peeling.settings import PeelingSettings, check_settings

__all__ = ["PeelingError", "PeelingSettings", "check_settings"]
