"""Sampling steps as search-space dimensions, and the joint steps x expert space of a mixture.

- :class:`StepsSpace`: the steps one interval receives: dimensions ``count`` (how many
  sampling steps) and ``spacing`` (their placement, a code into
  :data:`experts.schedule.SPACINGS`). Its ``macs`` is the number of network calls, a
  multiplier, not a cost by itself.
- :class:`IntervalSpace`: one interval of a mixture, a :class:`~search_spaces.ProductSpace`
  of parts ``steps`` (a :class:`StepsSpace`) and ``expert`` (any space, e.g. a
  :class:`~search_spaces.UNetSpace`), whose MACs are ``count x expert MACs per call`` (and
  relaxed MACs the product of the parts' relaxed MACs: the exact expectation for independent
  choices, exact at one-hot weights).
- :func:`joint_space`: the whole mixture, ``ProductSpace`` of parts ``e0, e1, ...`` (one
  :class:`IntervalSpace` per interval, weight 1): its MACs are the trajectory MACs, the sum
  over intervals of steps x the expert's MACs per call. :func:`split_joint` turns one of its
  archs into a :class:`~experts.schedule.StepSchedule` and one expert arch per interval.

Example:
    >>> from search_spaces import Dimension, SimpleSpace
    >>> from experts.intervals import Intervals
    >>> expert = SimpleSpace([Dimension("w", (4, 8))], macs_fn=lambda a: 10 * a["w"])
    >>> iv = Intervals(1000, (500,))
    >>> space = joint_space(iv, [expert, expert], [(1, 2, 3), (0, 1, 2)])
    >>> arch = space.join({"e0": {"steps/count": 3, "steps/spacing": 0, "expert/w": 4},
    ...                    "e1": {"steps/count": 1, "steps/spacing": 0, "expert/w": 8}})
    >>> space.macs(arch)  # 3 x 40 + 1 x 80
    200
    >>> schedule, archs = split_joint(space, arch, iv)
    >>> schedule.timesteps(), [a["w"] for a in archs]
    ([500, 333, 166, 0], [4, 8])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from experts.intervals import Intervals
from experts.schedule import SPACINGS, IntervalSteps, StepSchedule
from search_spaces import Arch, Dimension, ProductSpace, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_SPACINGS", "IntervalSpace", "JointSpace", "ModelSpace", "PinnedSpace", "StepsSpace", "interval_counts",
    "joint_space", "part_name", "split_joint",
]

#: Spacings a :class:`StepsSpace` offers by default; the last (DDIM's default ``leading``) is the
#: full arch's.
DEFAULT_SPACINGS: tuple[str, ...] = ("trailing", "uniform", "quadratic", "leading")


def part_name(k: int) -> str:
    """Name of interval ``k``'s part in a mixture's product space: ``e0``, ``e1``, ..."""
    return f"e{int(k)}"


def interval_counts(intervals: Intervals, counts: Sequence[int] | Sequence[Sequence[int]] | None = None,
                    max_steps: int | None = None) -> list[tuple[int, ...]]:
    """The allowed step counts of each interval.

    Args:
        intervals: the experts' intervals.
        counts: one list shared by every interval, one list per interval, or None
            (``0 .. max_steps``).
        max_steps: if given, counts above it are dropped.

    Each interval keeps the counts that fit in its span; interval 0 (holding ``t = 0``, where
    the trajectory ends) drops 0.

    Raises:
        ValueError: neither ``counts`` nor ``max_steps``, or an interval left without a count.

    Example:
        >>> interval_counts(Intervals(1000, (998,)), max_steps=3)
        [(1, 2, 3), (0, 1, 2)]
    """
    n = intervals.num_intervals
    if counts is None:
        if max_steps is None:
            raise ValueError("give the step counts or max_steps")
        per: list[Sequence[int]] = [range(int(max_steps) + 1)] * n
    elif all(hasattr(c, "__index__") for c in counts):
        per = [counts] * n  # type: ignore[list-item]
    else:
        per = list(counts)  # type: ignore[arg-type]
        if len(per) != n:
            raise ValueError(f"got {len(per)} count lists for {n} intervals")
    out = []
    for k, ((lo, hi), cs) in enumerate(zip(intervals.spans(), per)):
        keep = sorted({int(c) for c in cs if 0 <= int(c) <= hi - lo and (max_steps is None or int(c) <= int(max_steps))
                       and (k != 0 or int(c) >= 1)})
        if not keep:
            raise ValueError(f"interval {k} [{lo}, {hi}): no allowed step count among {list(cs)} "
                             f"(at most {hi - lo} fit{'; it needs >= 1' if k == 0 else ''})")
        out.append(tuple(keep))
    return out


class StepsSpace(SearchSpace):
    """The sampling steps of one interval: ``count`` and ``spacing``.

    Args:
        counts: allowed step counts, strictly increasing (the last is the full arch's).
        spacings: allowed placements, names from :data:`~experts.schedule.SPACINGS`; the
            dimension's choices are their codes (``SPACINGS.index(name)``), in this order.
        span: the interval ``[lo, hi)`` in training timesteps, if known. Then every count
            must fit in it, and 0 is refused for the interval holding ``t = 0`` (the
            trajectory ends there).

    Raises:
        ValueError: naming the rule (bad counts, unknown spacing, 0 steps where t = 0 lies).
    """

    COUNT = "count"
    SPACING = "spacing"

    def __init__(self, counts: Sequence[int], spacings: Sequence[str] = DEFAULT_SPACINGS, *,
                 span: tuple[int, int] | None = None) -> None:
        counts = tuple(int(c) for c in counts)
        if not counts or any(b <= a for a, b in zip(counts, counts[1:])) or counts[0] < 0:
            raise ValueError(f"step counts must be non-negative and strictly increasing, got {list(counts)}")
        unknown = [s for s in spacings if s not in SPACINGS]
        if unknown or not spacings:
            raise ValueError(f"unknown spacing {unknown[0] if unknown else None!r}; choices: {', '.join(SPACINGS)}")
        if span is not None:
            lo, hi = int(span[0]), int(span[1])
            if lo == 0 and counts[0] == 0:
                raise ValueError(f"interval [{lo}, {hi}) holds t=0: its step counts must not include 0 "
                                 f"(the trajectory must end in the lowest-noise interval)")
            if counts[-1] > hi - lo:
                raise ValueError(f"{counts[-1]} steps do not fit in the {hi - lo} timesteps of [{lo}, {hi})")
            span = (lo, hi)
        self.counts = counts
        self.spacings = tuple(spacings)
        self.span = span
        self._dims = (
            Dimension(self.COUNT, counts, kind="steps"),
            Dimension(self.SPACING, tuple(SPACINGS.index(s) for s in self.spacings), kind="spacing"),
        )

    @classmethod
    def for_interval(cls, intervals: Intervals, k: int, counts: Sequence[int],
                     spacings: Sequence[str] = DEFAULT_SPACINGS) -> "StepsSpace":
        """The steps space of interval ``k`` (its span and the t = 0 rule applied)."""
        return cls(counts, spacings, span=intervals.spans()[int(k)])

    def dimensions(self) -> tuple[Dimension, ...]:
        return self._dims

    def macs(self, arch: Mapping[str, int]) -> int:
        """The number of network calls (a multiplier of the expert's MACs per call)."""
        return int(arch[self.COUNT])

    def macs_relaxed(self, weights: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
        """Expected step count (exact at one-hot weights); a missing ``count`` counts as full."""
        import torch

        unknown = sorted(set(weights) - {self.COUNT, self.SPACING})
        if unknown:
            raise ValueError(f"unknown or tied dimension {unknown[0]!r} in relaxed weights")
        if self.COUNT not in weights:
            return torch.tensor(float(self.counts[-1]), dtype=torch.float64)
        w = weights[self.COUNT].to(torch.float64)
        return (w * torch.tensor(self.counts, dtype=torch.float64, device=w.device)).sum()

    def interval_steps(self, arch: Mapping[str, int]) -> IntervalSteps:
        """The :class:`~experts.schedule.IntervalSteps` an arch of this space stands for."""
        return IntervalSteps(int(arch[self.COUNT]), SPACINGS[int(arch[self.SPACING])])

    def arch_of(self, steps: IntervalSteps) -> Arch:
        """Inverse of :meth:`interval_steps`. Explicit timesteps are matched to the first of
        :attr:`spacings` that places them (needs :attr:`span`).

        Raises:
            ValueError: a count or spacing not in this space, or explicit timesteps that no
                spacing of this space places.
        """
        if steps.count not in self.counts:
            raise ValueError(f"{steps.count} steps is not an allowed count {list(self.counts)}")
        if steps.spacing in self.spacings:
            return Arch({self.COUNT: steps.count, self.SPACING: SPACINGS.index(steps.spacing)})
        if self.span is None:
            raise ValueError(f"spacing {steps.spacing!r} is not one of {list(self.spacings)}")
        want = steps.place(*self.span)
        for name in self.spacings:
            if IntervalSteps(steps.count, name).place(*self.span) == want:
                return Arch({self.COUNT: steps.count, self.SPACING: SPACINGS.index(name)})
        raise ValueError(f"timesteps {want} are not placed by any spacing of {list(self.spacings)} "
                         f"in [{self.span[0]}, {self.span[1]})")


class ModelSpace(SearchSpace):
    """Which network serves an interval: its expert (``base`` = 0) or the base model itself,
    unpruned (``base`` = 1, the full choice). Not a cost by itself (MACs 0): the
    :class:`IntervalSpace` holding it pins the expert at its full arch when the base serves,
    whose MACs are the base model's.

    Example:
        >>> ModelSpace().full().to_dict()
        {'base': 1}
    """

    BASE = "base"

    def __init__(self) -> None:
        self._dims = (Dimension(self.BASE, (0, 1), kind="model"),)

    def dimensions(self) -> tuple[Dimension, ...]:
        return self._dims

    def macs(self, arch: Mapping[str, int]) -> int:
        return 0


class IntervalSpace(ProductSpace):
    """One interval of a mixture: parts ``steps`` and ``expert`` (and ``model`` when the base
    model is a choice); MACs = count x expert MACs.

    Keys are ``steps/count``, ``steps/spacing``, ``expert/<expert dimension>`` and, with
    ``base_choice``, ``model/base`` (1: the base model serves the interval; the rule then pins
    the expert part at its full arch, the base model's architecture and MACs, and
    :meth:`repair` sets it there).

    Example:
        >>> from search_spaces import Dimension, SimpleSpace
        >>> expert = SimpleSpace([Dimension("w", (4, 8))], macs_fn=lambda a: 10 * a["w"])
        >>> iv = IntervalSpace(StepsSpace((1, 2)), expert, base_choice=True)
        >>> arch = iv.repair(iv.join({"steps": {"count": 2, "spacing": 0}, "expert": {"w": 4},
        ...                          "model": {"base": 1}}))
        >>> arch["expert/w"], iv.macs(arch), iv.uses_base(arch)
        (8, 160, True)
    """

    STEPS = "steps"
    EXPERT = "expert"
    MODEL = "model"

    def __init__(self, steps: StepsSpace, expert: SearchSpace, *, base_choice: bool = False) -> None:
        parts: dict[str, SearchSpace] = {self.STEPS: steps, self.EXPERT: expert}
        if base_choice:
            parts[self.MODEL] = ModelSpace()
        super().__init__(parts)
        self.steps_space = steps
        self.expert_space = expert
        self.base_choice = bool(base_choice)

    def parts_of(self, arch: Mapping[str, int]) -> tuple[Arch, Arch]:
        """``(steps arch, expert arch)`` of ``arch``."""
        parts = self.split(arch)
        return parts[self.STEPS], parts[self.EXPERT]

    def uses_base(self, arch: Mapping[str, int]) -> bool:
        """True when the base model serves the interval (``model/base`` = 1)."""
        return self.base_choice and bool(int(arch[f"{self.MODEL}{self.SEP}{ModelSpace.BASE}"]))

    def with_base(self, arch: Mapping[str, int], base: bool) -> Arch:
        """``arch`` with the base model serving (``base``) or not; the expert at its full arch
        when it does.

        Raises:
            ValueError: ``base`` asked of a space without the base as a choice.
        """
        if not self.base_choice:
            if base:
                raise ValueError("this interval space does not offer the base model (base_choice=False)")
            return Arch(arch)
        values = dict(arch)
        values[f"{self.MODEL}{self.SEP}{ModelSpace.BASE}"] = int(bool(base))
        return self.repair(Arch(values))

    def check_rules(self, arch: Arch) -> None:
        super().check_rules(arch)
        if self.uses_base(arch):
            expert = self.parts_of(arch)[1]
            if expert != self.expert_space.full():
                raise ValueError(f"{self.MODEL}{self.SEP}{ModelSpace.BASE}=1 (the base model serves the interval) "
                                 "needs the expert part at its full arch")

    def repair(self, arch: Arch) -> Arch:
        arch = super().repair(arch)
        if not self.uses_base(arch):
            return arch
        parts = dict(self.split(arch))
        parts[self.EXPERT] = self.expert_space.full()
        return self.join(parts)

    def macs_per_call(self, arch: Mapping[str, int]) -> int:
        """MACs of one call of the expert at its arch."""
        return int(self.expert_space.macs(self.parts_of(arch)[1]))

    def macs(self, arch: Mapping[str, int]) -> int:
        steps, expert = self.parts_of(arch)
        return int(self.steps_space.macs(steps)) * int(self.expert_space.macs(expert))

    def macs_relaxed(self, weights: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
        """Expected steps x expected MACs per call (each part's own relaxation; missing: full).
        With the base as a choice of probability ``p``: ``p x full MACs + (1 - p) x expected
        expert MACs``."""
        import torch

        parts = self.split_values(weights)
        steps = self.steps_space.macs_relaxed(parts[self.STEPS])
        expert_w = parts[self.EXPERT]
        full = torch.tensor(float(self.expert_space.macs(self.expert_space.full())), dtype=torch.float64)
        expert = self.expert_space.macs_relaxed(expert_w).to(torch.float64) if expert_w else full
        model_w = parts.get(self.MODEL) or {}
        if ModelSpace.BASE in model_w:
            p = model_w[ModelSpace.BASE].to(torch.float64)[1]
            expert = p * full + (1 - p) * expert
        return steps.to(torch.float64) * expert


class PinnedSpace(SearchSpace):
    """A space fixed at one arch: every dimension of ``space`` with the single choice ``arch``
    has (MACs and rules are ``space``'s). The expert of a steps-only mixture: the base model
    at full width while the steps are searched.

    Args:
        space: the model's space (e.g. the base model's supernet space).
        arch: the arch it is pinned at (default: ``space.full()``).
    """

    def __init__(self, space: SearchSpace, arch: Mapping[str, int] | None = None) -> None:
        arch = space.full() if arch is None else Arch(arch)
        space.validate(arch)
        self.space = space
        self.arch = arch
        self._dims = tuple(Dimension(d.name, (arch[d.name],), d.kind, d.tied_to, d.rule) for d in space.dimensions())
        self._macs = int(space.macs(arch))

    def dimensions(self) -> tuple[Dimension, ...]:
        return self._dims

    def macs(self, arch: Mapping[str, int]) -> int:
        return self._macs

    def macs_relaxed(self, weights: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
        """The pinned arch's MACs (a constant: nothing to choose)."""
        import torch

        return torch.tensor(float(self._macs), dtype=torch.float64)


class JointSpace(ProductSpace):
    """The joint steps x experts space of a mixture (parts ``e<k>``, each an
    :class:`IntervalSpace`, weight 1): MACs are the trajectory MACs.

    Args:
        parts: ``{"e0": IntervalSpace, ...}`` in interval order.
        max_steps: if given, the rule "at most ``max_steps`` sampling steps in all";
            :meth:`repair` lowers the largest counts until it holds.
    """

    def __init__(self, parts: Mapping[str, IntervalSpace], max_steps: int | None = None) -> None:
        super().__init__(parts)
        self.max_steps = None if max_steps is None else int(max_steps)

    def interval_parts(self) -> list[IntervalSpace]:
        """The :class:`IntervalSpace` of each interval, in order."""
        return list(self.parts.values())  # type: ignore[arg-type]

    def num_steps(self, arch: Mapping[str, int]) -> int:
        """Total sampling steps of ``arch``."""
        key = f"{IntervalSpace.STEPS}{self.SEP}{StepsSpace.COUNT}"
        return sum(int(a[key]) for a in self.split_values(arch).values())

    def full(self) -> Arch:
        """Every expert at its full arch with the most steps the ``max_steps`` rule allows
        (the largest counts lowered by :meth:`repair`)."""
        return self.repair(super().full())

    def check_rules(self, arch: Arch) -> None:
        super().check_rules(arch)
        if self.max_steps is not None and self.num_steps(arch) > self.max_steps:
            raise ValueError(f"{self.num_steps(arch)} sampling steps in all: the rule is at most {self.max_steps}")

    def repair(self, arch: Arch) -> Arch:
        arch = super().repair(arch)
        if self.max_steps is None:
            return arch
        values = dict(arch)
        keys = [f"{p}{self.SEP}{IntervalSpace.STEPS}{self.SEP}{StepsSpace.COUNT}" for p in self.parts]
        spaces = [part.steps_space for part in self.interval_parts()]
        while sum(int(values[k]) for k in keys) > self.max_steps:
            lowerable = [i for i, k in enumerate(keys) if int(values[k]) > spaces[i].counts[0]]
            if not lowerable:
                break  # check_rules names the broken rule
            i = max(lowerable, key=lambda j: (int(values[keys[j]]), -j))
            values[keys[i]] = spaces[i].counts[spaces[i].counts.index(int(values[keys[i]])) - 1]
        return Arch(values)


def joint_space(intervals: Intervals, expert_spaces: Sequence[SearchSpace], counts: Sequence[Sequence[int]],
                spacings: Sequence[str] = DEFAULT_SPACINGS, *, max_steps: int | None = None,
                base_choice: bool = False) -> JointSpace:
    """The mixture's joint space: part ``e<k>`` = steps of interval ``k`` x its expert's space.

    Args:
        intervals: the experts' intervals.
        expert_spaces: one space per interval (the same object may serve several).
        counts: allowed step counts per interval (0 refused for interval 0; see
            :func:`interval_counts`).
        spacings: allowed placements, shared by every interval.
        max_steps: at most this many steps in all (a rule of the space), if given.
        base_choice: offer the base model itself as each interval's network (``model/base``).
    """
    n = intervals.num_intervals
    if len(expert_spaces) != n or len(counts) != n:
        raise ValueError(f"got {len(expert_spaces)} expert spaces and {len(counts)} count lists for {n} intervals")
    parts = {}
    for k in range(n):
        try:
            steps = StepsSpace.for_interval(intervals, k, counts[k], spacings)
        except ValueError as e:
            raise ValueError(f"interval {k}: {e}") from None
        parts[part_name(k)] = IntervalSpace(steps, expert_spaces[k], base_choice=base_choice)
    return JointSpace(parts, max_steps)


def split_joint(space: ProductSpace, arch: Mapping[str, int], intervals: Intervals) -> tuple[StepSchedule, list[Arch]]:
    """``(step schedule, expert arch per interval)`` of an arch of :func:`joint_space`."""
    per = space.split(arch)
    steps, experts = [], []
    for k in range(intervals.num_intervals):
        name = part_name(k)
        part = space.parts.get(name)
        if not isinstance(part, IntervalSpace):
            raise ValueError(f"part {name} is a {type(part).__name__}, not an IntervalSpace")
        s, e = part.parts_of(per[name])
        steps.append(part.steps_space.interval_steps(s))
        experts.append(e)
    return StepSchedule(intervals, tuple(steps)), experts
