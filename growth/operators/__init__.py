"""Growth operators: pure functions (small config, state dict[, moments]) -> grown config, state dict[, moments].

Importing this package registers every built-in operator (depth: stack, stack_top, stack_middle, interleave,
zero_block; width: net2net, fusion).
"""
from growth.operators import depth, width  # noqa: F401  (registration side effect)
from growth.operators.base import GrowthError, GrowthResult
from growth.operators.registry import available_operators, get_operator, register_operator

__all__ = ["GrowthError", "GrowthResult", "available_operators", "get_operator", "register_operator"]
