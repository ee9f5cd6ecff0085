"""The uniform-width rule: every width at the same fraction of full, the widest that fits.

This is the hand-made baseline every allocation method must beat (``uniform`` in
``diffnas bench``, and the first point the Optuna search evaluates), defined once here.

Example:
    >>> from search_spaces import Dimension, SimpleSpace
    >>> from search_spaces.uniform import uniform_arch
    >>> s = SimpleSpace([Dimension("a", (8, 16, 32)), Dimension("b", (8, 16, 32))],
    ...                 macs_fn=lambda x: x["a"] + x["b"])
    >>> u = uniform_arch(s, 0.5)
    >>> u.arch.to_dict(), u.fraction
    ({'a': 16, 'b': 16}, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search_spaces.base import Arch, Dimension, ProductSpace, SearchSpace

__all__ = ["UniformArch", "uniform_arch", "choice_fraction"]

_EPS = 1e-9


@dataclass(frozen=True)
class UniformArch:
    """The widest uniform arch within a budget, and the width fraction it uses."""

    arch: Arch
    fraction: float


def choice_fraction(d: Dimension, value: Any) -> float:
    """Size of a choice relative to the full one (by value for ints, by position otherwise)."""
    if isinstance(d.full, bool):
        return 1.0 if value else 0.0
    if d.full and d.full > 0 and all(c >= 0 for c in d.choices):
        return float(value) / float(d.full)
    n = len(d.choices)
    return d.index(value) / (n - 1) if n > 1 else 1.0


def uniform_arch(space: SearchSpace, budget_ratio: float) -> UniformArch | None:
    """The widest *uniform* arch whose MACs are at most ``budget_ratio`` of the full arch's.

    Spaces with their own ``uniform(fraction)`` rule (:class:`~search_spaces.UNetSpace`: every
    width at the choice nearest the fraction, all layers and residual branches kept), or a
    :class:`ProductSpace` whose parts all have one, use it with the largest fraction among
    the choices' fractions that meets the budget. Other spaces: every non-boolean dimension at
    the largest choice not above a common fraction, depth kept full.

    Returns ``None`` when even the narrowest uniform arch is over the budget.
    """
    limit = budget_ratio * space.macs(space.full()) + _EPS
    parts = list(space.parts.values()) if isinstance(space, ProductSpace) else [space]
    if all(callable(getattr(p, "uniform", None)) for p in parts):
        fracs = {round(choice_fraction(d, c), 6) for p in parts for d in p.dimensions()
                 if not isinstance(d.full, bool) and d.full for c in d.choices}
        for f in sorted(fracs, reverse=True):
            if isinstance(space, ProductSpace):
                arch = space.join({name: part.uniform(f) for name, part in space.parts.items()})
            else:
                arch = space.uniform(f)  # type: ignore[attr-defined]
            if space.macs(arch) <= limit:
                return UniformArch(arch, f)
        return None
    free = space.free_dimensions()
    levels = sorted({choice_fraction(d, c) for d in free if not isinstance(d.full, bool) for c in d.choices})
    for level in reversed(levels):
        values: dict[str, Any] = {}
        for d in free:
            if isinstance(d.full, bool):
                values[d.name] = d.full
                continue
            ok = [c for c in d.choices if choice_fraction(d, c) <= level + _EPS]
            values[d.name] = max(ok, key=d.index) if ok else d.smallest
        arch = space.repair(space.complete(values))
        if space.is_valid(arch) and space.macs(arch) <= limit:
            return UniformArch(arch, level)
    return None
