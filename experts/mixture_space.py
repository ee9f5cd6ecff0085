"""The search space of a mixture of interval experts, and its arch <-> :class:`Allocation` conversion.

A mixture of interval experts is searched as one :class:`~search_spaces.ProductSpace`: one part
per expert, named ``e0``, ``e1``, ... in interval order, each part that expert's own space,
weighted by the sampling steps the expert serves, so ``space.macs(arch)`` is the trajectory
MACs. :class:`MixtureSpace` builds that space once and owns the part names and the
conversions every allocation method needs (the router, the search, the baselines).

Example:
    >>> from search_spaces import Dimension, SimpleSpace
    >>> from experts.intervals import Intervals
    >>> s = SimpleSpace([Dimension("w", (8, 16))], macs_fn=lambda a: a["w"])
    >>> mix = MixtureSpace([s, s], steps_per_expert=[3, 1], intervals=Intervals(1000, (500,)))
    >>> arch = mix.join([{"w": 8}, {"w": 16}])
    >>> arch.to_dict()
    {'e0/w': 8, 'e1/w': 16}
    >>> mix.space.macs(arch)
    40
    >>> alloc = mix.to_allocation(arch, method="uniform", budget_ratio=0.7, base_trajectory_macs=64)
    >>> alloc.macs_per_expert, alloc.steps_per_expert, alloc.trajectory_macs
    ((8, 16), (3, 1), 40)
    >>> mix.from_allocation(alloc) == arch
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from experts.allocation import Allocation
from experts.intervals import Intervals
from search_spaces import Arch, ProductSpace, SearchSpace
from search_spaces.errors import UserError

__all__ = ["MixtureSpace"]


class MixtureSpace:
    """One part per interval expert, weighted by sampling steps (see the module docstring).

    Args:
        spaces: each expert's search space, in interval order.
        steps_per_expert: sampling steps each expert serves (the part weights); whole numbers
            for :meth:`to_allocation`.
        intervals: the experts' intervals (one expert per interval).

    Attributes:
        space: the :class:`~search_spaces.ProductSpace` (parts ``e0, e1, ...``).
        intervals: the experts' intervals.
        steps_per_expert: the part weights, as given.

    Raises:
        ValueError: the number of spaces, step counts and intervals differ.
    """

    def __init__(self, spaces: Sequence[SearchSpace], steps_per_expert: Sequence[float], intervals: Intervals) -> None:
        spaces = list(spaces)
        steps = tuple(steps_per_expert)
        n = intervals.num_intervals
        if len(spaces) != n or len(steps) != n:
            raise ValueError(f"need one space and one step count per interval ({n}), got "
                             f"{len(spaces)} and {len(steps)}")
        self.intervals = intervals
        self.steps_per_expert = steps
        self.space = ProductSpace({self.part_name(k): sp for k, sp in enumerate(spaces)},
                                  weights={self.part_name(k): float(s) for k, s in enumerate(steps)})
        self._names = frozenset(d.name for d in self.space.dimensions())

    @classmethod
    def from_product(cls, space: SearchSpace, intervals: Intervals) -> "MixtureSpace":
        """The mixture space of a :class:`~search_spaces.ProductSpace` whose parts are the experts
        (named ``e0, e1, ...`` in interval order) and whose weights are their sampling steps.

        Raises:
            UserError: not a ProductSpace, or not one part per interval.
            ValueError: the parts are not named ``e0, e1, ...``.
        """
        if not isinstance(space, ProductSpace):
            raise UserError("an allocation needs a ProductSpace with one part per interval expert")
        if len(space.parts) != intervals.num_intervals:
            raise UserError(f"space has {len(space.parts)} experts but intervals has {intervals.num_intervals}")
        names = list(space.parts)
        if names != [cls.part_name(k) for k in range(len(names))]:
            raise ValueError(f"mixture parts must be named e0, e1, ... in interval order, got {names}")
        return cls(list(space.parts.values()), [space.weights[p] for p in names], intervals)

    @staticmethod
    def part_name(k: int) -> str:
        """Name of expert ``k``'s part: ``e0``, ``e1``, ..."""
        return f"e{k}"

    @property
    def num_experts(self) -> int:
        """Number of experts (= parts = intervals)."""
        return len(self.space.parts)

    @property
    def parts(self) -> list[SearchSpace]:
        """Each expert's own space, in interval order."""
        return list(self.space.parts.values())

    def split_values(self, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per-expert dicts of any per-dimension values (choices, relaxed weights), prefix removed.

        Raises:
            ValueError: a key that is not a dimension of the mixture space (named).
        """
        for key in values:
            if key not in self._names:
                raise ValueError(f"unknown key {key!r}: not a dimension of the mixture space")
        per = self.space.split_values(values)
        return [per[p] for p in self.space.parts]

    def split(self, arch: Mapping[str, Any]) -> list[Arch]:
        """One arch per expert (prefix removed), in interval order.

        Raises:
            ValueError: a key that is not a dimension of the mixture space (named).
        """
        return [Arch(a) for a in self.split_values(arch)]

    def join(self, archs: Sequence[Mapping[str, Any]]) -> Arch:
        """Inverse of :meth:`split`: the mixture arch of one arch per expert."""
        if len(archs) != self.num_experts:
            raise ValueError(f"{len(archs)} archs for {self.num_experts} experts")
        return self.space.join({self.part_name(k): a for k, a in enumerate(archs)})

    def whole_steps(self) -> tuple[int, ...]:
        """The step counts as integers.

        Raises:
            UserError: a step count that is not a whole number.
        """
        for k, s in enumerate(self.steps_per_expert):
            if abs(float(s) - round(float(s))) > 1e-9:
                raise UserError(f"expert {k} serves {s} sampling steps: not a whole number, "
                                 "an Allocation needs whole step counts")
        return tuple(int(round(float(s))) for s in self.steps_per_expert)

    def full_trajectory_macs(self) -> int:
        """Trajectory MACs of every expert at its full arch (sum of MACs x steps)."""
        return int(sum(part.macs(part.full()) * s for part, s in zip(self.parts, self.whole_steps())))

    def to_allocation(
        self,
        arch: Mapping[str, Any],
        *,
        method: str,
        budget_ratio: float,
        base_trajectory_macs: float,
        info: Mapping[str, Any] | None = None,
    ) -> Allocation:
        """The :class:`~experts.allocation.Allocation` of a mixture arch.

        Args:
            arch: an arch of :attr:`space`.
            method: who made it (``router``, ``search``, ...).
            budget_ratio: the budget it was made for.
            base_trajectory_macs: the base model's trajectory MACs (what ratio 1 means).
            info: free-form provenance.

        Raises:
            ValueError: an unknown key; :class:`~search_spaces.errors.UserError` (a ValueError):
                step counts that are not whole numbers.
        """
        archs = self.split(arch)
        steps = self.whole_steps()
        return Allocation(
            method=method,
            budget_ratio=float(budget_ratio),
            intervals=self.intervals,
            archs=tuple(archs),
            macs_per_expert=tuple(part.macs(a) for part, a in zip(self.parts, archs)),
            steps_per_expert=steps,
            base_trajectory_macs=int(round(base_trajectory_macs)),
            info=dict(info or {}),
        )

    def from_allocation(self, alloc: Allocation) -> Arch:
        """The (validated) mixture arch an allocation describes.

        Raises:
            ValueError: the allocation has another number of experts or other intervals, or an
                arch that is not valid in its expert's space.
        """
        if len(alloc.archs) != self.num_experts:
            raise ValueError(f"allocation has {len(alloc.archs)} experts, the mixture space has {self.num_experts}")
        if alloc.intervals != self.intervals:
            raise ValueError(f"allocation was made for intervals {list(alloc.intervals.boundaries)}, the mixture "
                             f"space has {list(self.intervals.boundaries)}")
        arch = self.join(alloc.archs)
        self.space.validate(arch)
        return arch

    def __repr__(self) -> str:
        return (f"MixtureSpace(experts={self.num_experts}, steps_per_expert={list(self.steps_per_expert)}, "
                f"intervals={self.intervals})")
