"""The other budget baselines without intervals: the base model with fewer sampling steps
(:func:`fewer_steps_for_budget`) and every expert at the same width (:func:`uniform_fraction_arch`).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fewer_steps_for_budget", "uniform_fraction_arch"]


def fewer_steps_for_budget(num_steps: int, budget_ratio: float) -> int:
    """Sampling steps of the base model whose trajectory MACs meet ``budget_ratio`` of
    ``num_steps`` steps: ``floor(budget_ratio * num_steps)``, at least 1.

    Example:
        >>> fewer_steps_for_budget(20, 0.5), fewer_steps_for_budget(4, 0.1)
        (10, 1)
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return max(1, int(math.floor(budget_ratio * num_steps + 1e-9)))


def uniform_fraction_arch(space: Any, budget_ratio: float) -> tuple[Any, float] | None:
    """``(arch, f)``: the widest uniform arch within the budget and its width fraction
    (:func:`search_spaces.uniform.uniform_arch`, the one uniform rule), or None if none fits."""
    from search_spaces.uniform import uniform_arch

    found = uniform_arch(space, budget_ratio)
    return (found.arch, found.fraction) if found is not None else None
