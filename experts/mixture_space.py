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

The joint space (:meth:`MixtureSpace.joint`) searches the sampling steps too: part ``e<k>`` is
an :class:`~experts.steps_space.IntervalSpace` (keys ``steps/count``, ``steps/spacing``,
``expert/<dimension>``), weight 1, and ``space.macs(arch)`` is again the trajectory MACs, the
sum over intervals of steps x the expert's MACs per call:

    >>> joint = MixtureSpace.joint(Intervals(1000, (500,)), [s, s], counts=(0, 1, 2, 3))
    >>> arch = joint.join([{"w": 8}, {"w": 16}], schedule=StepSchedule.from_counts(joint.intervals, (3, 1)))
    >>> joint.space.macs(arch), joint.schedule(arch).timesteps(), [a["w"] for a in joint.split(arch)]
    (40, [500, 333, 166, 0], [8, 16])
    >>> alloc = joint.to_allocation(arch, method="router", budget_ratio=0.7, base_trajectory_macs=64)
    >>> alloc.steps_per_expert, alloc.timesteps() == joint.schedule(arch).timesteps()
    ((3, 1), True)
    >>> joint.from_allocation(alloc) == arch
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from experts.allocation import Allocation
from experts.intervals import Intervals
from experts.schedule import StepSchedule
from experts.steps_space import (
    DEFAULT_SPACINGS,
    IntervalSpace,
    JointSpace,
    PinnedSpace,
    StepsSpace,
    interval_counts,
    joint_space,
    part_name,
    split_joint,
)
from search_spaces import Arch, ProductSpace, SearchSpace, SimpleSpace
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
        space: the :class:`~search_spaces.ProductSpace` (parts ``e0, e1, ...``); for a joint
            space a :class:`~experts.steps_space.JointSpace`.
        intervals: the experts' intervals.
        steps_per_expert: the part weights, as given; ``None`` for a joint space (the steps
            are dimensions: :meth:`schedule`).

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
        self.steps_per_expert: tuple[float, ...] | None = steps
        self.space: ProductSpace = ProductSpace({self.part_name(k): sp for k, sp in enumerate(spaces)},
                                                weights={self.part_name(k): float(s) for k, s in enumerate(steps)})
        self._expert_spaces = spaces
        self._names = frozenset(d.name for d in self.space.dimensions())

    # ----------------------------------------------------------------- construction
    @classmethod
    def joint(
        cls,
        intervals: Intervals,
        expert_spaces: Sequence[SearchSpace],
        *,
        counts: Sequence[int] | Sequence[Sequence[int]] | None = None,
        max_steps: int | None = None,
        spacings: Sequence[str] = DEFAULT_SPACINGS,
        base_choice: bool = False,
    ) -> "MixtureSpace":
        """The joint steps x experts space: per interval, its step count, their spacing and the
        expert's arch (and, with ``base_choice``, whether the base model serves it instead).

        Args:
            intervals: the experts' intervals.
            expert_spaces: one space per interval.
            counts: allowed step counts, shared or per interval (None: ``0 .. max_steps``);
                clipped to each interval's span, 0 dropped for interval 0
                (:func:`~experts.steps_space.interval_counts`).
            max_steps: at most this many steps in all (a rule of the space; counts above it dropped).
            spacings: allowed placements (names of :data:`experts.schedule.SPACINGS`); the last
                is the full arch's.
            base_choice: each interval may be served by the base model itself, unpruned (key
                ``e<k>/model/base``): "the base with fewer steps" and "the base with a searched
                schedule" are then points of the space. The experts must be copies of the base
                model's architecture (their full arch has its MACs).
        """
        per = interval_counts(intervals, counts, max_steps)
        return cls._of_joint(joint_space(intervals, list(expert_spaces), per, spacings, max_steps=max_steps,
                                         base_choice=base_choice), intervals)

    @classmethod
    def steps_only(
        cls,
        intervals: Intervals,
        base: SearchSpace | int,
        *,
        counts: Sequence[int] | Sequence[Sequence[int]] | None = None,
        max_steps: int | None = None,
        spacings: Sequence[str] = DEFAULT_SPACINGS,
    ) -> "MixtureSpace":
        """The joint space with every expert fixed at the base model: only the steps are searched.

        Args:
            base: the base model's space (every expert is pinned at its full arch, so the
                allocation's archs are that arch) or the base model's MACs per call (the
                archs are empty).
            intervals, counts, max_steps, spacings: as :meth:`joint`.
        """
        if isinstance(base, SearchSpace):
            expert: SearchSpace = PinnedSpace(base)
        else:
            macs = int(base)
            expert = SimpleSpace([], macs_fn=lambda a: macs)
        return cls.joint(intervals, [expert] * intervals.num_intervals, counts=counts, max_steps=max_steps,
                         spacings=spacings)

    @classmethod
    def _of_joint(cls, space: JointSpace, intervals: Intervals) -> "MixtureSpace":
        self = cls.__new__(cls)
        self.intervals = intervals
        self.steps_per_expert = None
        self.space = space
        self._expert_spaces = [p.expert_space for p in space.interval_parts()]
        self._names = frozenset(d.name for d in space.dimensions())
        return self

    @classmethod
    def from_product(cls, space: SearchSpace, intervals: Intervals) -> "MixtureSpace":
        """The mixture space of a :class:`~search_spaces.ProductSpace` whose parts are the experts
        (named ``e0, e1, ...`` in interval order) and whose weights are their sampling steps, or
        of a :class:`~experts.steps_space.JointSpace` (a joint mixture space).

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
        if isinstance(space, JointSpace):
            return cls._of_joint(space, intervals)
        return cls(list(space.parts.values()), [space.weights[p] for p in names], intervals)

    @staticmethod
    def part_name(k: int) -> str:
        """Name of expert ``k``'s part: ``e0``, ``e1``, ..."""
        return part_name(k)

    # ----------------------------------------------------------------- views
    @property
    def is_joint(self) -> bool:
        """True when the sampling steps are dimensions of the space (:meth:`joint`)."""
        return isinstance(self.space, JointSpace)

    @property
    def num_experts(self) -> int:
        """Number of experts (= parts = intervals)."""
        return len(self.space.parts)

    @property
    def parts(self) -> list[SearchSpace]:
        """Each expert's own space, in interval order (for a joint space: without the steps)."""
        return list(self._expert_spaces)

    @property
    def steps_spaces(self) -> list[StepsSpace]:
        """Each interval's :class:`~experts.steps_space.StepsSpace` (joint spaces only).

        Raises:
            ValueError: not a joint space.
        """
        return [p.steps_space for p in self._interval_parts()]

    def _interval_parts(self) -> list[IntervalSpace]:
        if not isinstance(self.space, JointSpace):
            raise ValueError("not a joint mixture space: the steps are fixed (MixtureSpace.joint makes one)")
        return self.space.interval_parts()

    def split_values(self, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per-part dicts of any per-dimension values (choices, relaxed weights), prefix removed.

        For a joint space the parts are the intervals: keys ``steps/count``, ``steps/spacing``
        and ``expert/<dimension>``.

        Raises:
            ValueError: a key that is not a dimension of the mixture space (named).
        """
        for key in values:
            if key not in self._names:
                raise ValueError(f"unknown key {key!r}: not a dimension of the mixture space")
        per = self.space.split_values(values)
        return [per[p] for p in self.space.parts]

    def split(self, arch: Mapping[str, Any]) -> list[Arch]:
        """One arch per expert (prefix removed; for a joint space the expert's arch, without
        the steps: see :meth:`schedule`), in interval order.

        Raises:
            ValueError: a key that is not a dimension of the mixture space (named).
        """
        per = [Arch(a) for a in self.split_values(arch)]
        if not self.is_joint:
            return per
        return [part.parts_of(a)[1] for part, a in zip(self._interval_parts(), per)]

    @property
    def base_choice(self) -> bool:
        """True when the base model is a choice of every interval (:meth:`joint` ``base_choice``)."""
        return self.is_joint and all(p.base_choice for p in self._interval_parts())

    def base_intervals(self, arch: Mapping[str, Any]) -> tuple[int, ...]:
        """The intervals the base model serves in ``arch`` (empty without the base as a choice)."""
        if not self.is_joint:
            return ()
        per = [Arch(a) for a in self.split_values(arch)]
        return tuple(k for k, (part, a) in enumerate(zip(self._interval_parts(), per)) if part.uses_base(a))

    def schedule(self, arch: Mapping[str, Any]) -> StepSchedule | None:
        """The step schedule of a joint arch (``None`` for a space without steps)."""
        if not self.is_joint:
            return None
        return split_joint(self.space, arch, self.intervals)[0]  # type: ignore[arg-type]

    def join(self, archs: Sequence[Mapping[str, Any]], schedule: StepSchedule | None = None,
             base_intervals: Sequence[int] = ()) -> Arch:
        """Inverse of :meth:`split` (and :meth:`schedule`, :meth:`base_intervals`): the mixture
        arch of one arch per expert.

        Args:
            archs: one arch per expert.
            schedule: a joint space's steps (needed there, refused otherwise); explicit
                timesteps are matched to the first spacing that places them.
            base_intervals: the intervals the base model serves (their archs must be full).

        Raises:
            ValueError: wrong counts, a missing or unneeded schedule, steps not in the space, or
                base intervals in a space without the base as a choice.
        """
        base = {int(k) for k in base_intervals}
        if len(archs) != self.num_experts:
            raise ValueError(f"{len(archs)} archs for {self.num_experts} experts")
        if not self.is_joint:
            if schedule is not None:
                raise ValueError("this mixture space has fixed steps: it takes no schedule (MixtureSpace.joint does)")
            if base:
                raise ValueError("this mixture space has fixed steps and experts only: the base model is not a choice")
            return self.space.join({self.part_name(k): a for k, a in enumerate(archs)})
        if schedule is None:
            raise ValueError("a joint mixture space needs the step schedule to join expert archs")
        if schedule.intervals != self.intervals:
            raise ValueError(f"schedule is for intervals {list(schedule.intervals.boundaries)}, the mixture space "
                             f"has {list(self.intervals.boundaries)}")
        parts = {}
        for k, (part, a, steps) in enumerate(zip(self._interval_parts(), archs, schedule.parts)):
            try:
                steps_arch = part.steps_space.arch_of(steps)
            except ValueError as e:
                raise ValueError(f"interval {k}: {e}") from None
            values = {IntervalSpace.STEPS: steps_arch, IntervalSpace.EXPERT: a}
            if part.base_choice:
                values[IntervalSpace.MODEL] = {"base": int(k in base)}
            elif k in base:
                raise ValueError(f"interval {k}: the base model is not a choice of this space (base_choice=False)")
            parts[self.part_name(k)] = part.join(values)
        return self.space.join(parts)

    # ----------------------------------------------------------------- costs and allocations
    def whole_steps(self) -> tuple[int, ...]:
        """The step counts as integers.

        Raises:
            UserError: a step count that is not a whole number, or a joint space (its steps
                are per arch: :meth:`schedule`).
        """
        if self.steps_per_expert is None:
            raise UserError("a joint mixture space has no fixed step counts: they are part of each arch "
                            "(MixtureSpace.schedule)")
        for k, s in enumerate(self.steps_per_expert):
            if abs(float(s) - round(float(s))) > 1e-9:
                raise UserError(f"expert {k} serves {s} sampling steps: not a whole number, "
                                 "an Allocation needs whole step counts")
        return tuple(int(round(float(s))) for s in self.steps_per_expert)

    def full_trajectory_macs(self) -> int:
        """Trajectory MACs of the full arch (every expert at its full arch; for a joint space
        also the most steps)."""
        if self.is_joint:
            return int(self.space.macs(self.space.full()))
        return int(sum(part.macs(part.full()) * s for part, s in zip(self.parts, self.whole_steps())))

    def macs_per_call(self, arch: Mapping[str, Any]) -> tuple[int, ...]:
        """MACs of one call of each expert at its arch."""
        if self.is_joint:
            per = [Arch(a) for a in self.split_values(arch)]
            return tuple(part.macs_per_call(a) for part, a in zip(self._interval_parts(), per))
        return tuple(int(part.macs(a)) for part, a in zip(self.parts, self.split(arch)))

    def to_allocation(
        self,
        arch: Mapping[str, Any],
        *,
        method: str,
        budget_ratio: float,
        base_trajectory_macs: float,
        info: Mapping[str, Any] | None = None,
    ) -> Allocation:
        """The :class:`~experts.allocation.Allocation` of a mixture arch (for a joint space with
        its ``schedule``; ``macs_per_expert`` are per call, ``steps_per_expert`` the schedule's).

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
        schedule = self.schedule(arch)
        return Allocation(
            method=method,
            budget_ratio=float(budget_ratio),
            intervals=self.intervals,
            archs=tuple(archs),
            macs_per_expert=self.macs_per_call(arch),
            steps_per_expert=schedule.steps_per_interval if schedule is not None else self.whole_steps(),
            base_trajectory_macs=int(round(base_trajectory_macs)),
            info=dict(info or {}),
            schedule=schedule,
            base_intervals=self.base_intervals(arch),
        )

    def from_allocation(self, alloc: Allocation, *, schedule: StepSchedule | None = None) -> Arch:
        """The (validated) mixture arch an allocation describes.

        Args:
            alloc: the allocation.
            schedule: for a joint space, the steps to use when the allocation has no schedule
                of its own (e.g. the sampler's uniform steps, ``StepSchedule.from_uniform``).

        Raises:
            ValueError: the allocation has another number of experts or other intervals, an
                arch that is not valid in its expert's space, or (joint space) no schedule or
                steps the space does not offer.
        """
        if len(alloc.archs) != self.num_experts:
            raise ValueError(f"allocation has {len(alloc.archs)} experts, the mixture space has {self.num_experts}")
        if alloc.intervals != self.intervals:
            raise ValueError(f"allocation was made for intervals {list(alloc.intervals.boundaries)}, the mixture "
                             f"space has {list(self.intervals.boundaries)}")
        if self.is_joint:
            schedule = alloc.schedule if alloc.schedule is not None else schedule
            if schedule is None:
                raise ValueError(f"allocation {alloc.method!r} has no step schedule; the joint space needs one "
                                 "(pass schedule=)")
        else:
            schedule = None
        arch = self.join(alloc.archs, schedule, alloc.base_intervals)
        self.space.validate(arch)
        return arch

    def __repr__(self) -> str:
        if self.is_joint:
            return (f"MixtureSpace.joint(experts={self.num_experts}, counts={[s.counts for s in self.steps_spaces]}, "
                    f"intervals={self.intervals}{', base_choice=True' if self.base_choice else ''})")
        return (f"MixtureSpace(experts={self.num_experts}, steps_per_expert={list(self.steps_per_expert or ())}, "
                f"intervals={self.intervals})")
