"""An allocation: one arch per interval expert under a budget on trajectory MACs.

Written by every allocation method (the routing agent, the Optuna search, the uniform and
static baselines) in one JSON format, so the benchmark and the report read them alike.

Example:
    >>> from search_spaces import Arch
    >>> from experts.intervals import Intervals
    >>> a = Allocation(
    ...     method="uniform", budget_ratio=0.5, intervals=Intervals(1000, (500,)),
    ...     archs=(Arch({"w": 8}), Arch({"w": 16})), macs_per_expert=(100, 200),
    ...     steps_per_expert=(10, 10), base_trajectory_macs=6000,
    ... )
    >>> a.trajectory_macs, a.achieved_ratio
    (3000, 0.5)
    >>> Allocation.from_json(a.to_json()) == a
    True

With a step schedule (the steps are searched too), ``steps_per_expert`` is the schedule's count
per interval and :meth:`Allocation.timesteps` the list a sampler visits:

    >>> from experts.schedule import StepSchedule
    >>> s = StepSchedule.from_counts(Intervals(1000, (500,)), (2, 1), "trailing")
    >>> b = Allocation(
    ...     method="router", budget_ratio=0.5, intervals=Intervals(1000, (500,)),
    ...     archs=(Arch({"w": 8}), Arch({"w": 16})), macs_per_expert=(100, 200),
    ...     steps_per_expert=(2, 1), base_trajectory_macs=6000, schedule=s,
    ... )
    >>> b.timesteps(), b.trajectory_macs
    ([999, 499, 249], 400)
    >>> Allocation.from_json(b.to_json()) == b
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experts.intervals import Intervals, atomic_write_text
from experts.schedule import StepSchedule
from search_spaces import Arch

__all__ = ["Allocation"]


@dataclass(frozen=True)
class Allocation:
    """One arch per expert, with the MACs it costs and the budget it was made for.

    Attributes:
        method: who made it (``router``, ``search``, ``uniform``, ``static``, ...).
        budget_ratio: target trajectory MACs as a fraction of the base model's.
        intervals: the experts' timestep intervals.
        archs: one arch per expert, in interval order.
        macs_per_expert: MACs of one network call of each expert at its arch.
        steps_per_expert: sampling steps each expert serves (for the sampler the budget was
            computed with).
        base_trajectory_macs: trajectory MACs of the base model with the same sampler/steps.
        info: free-form provenance (training seconds, evaluations, repair steps, ...).
        schedule: where the sampling steps fall, when they were allocated too (joint
            allocation); ``None``: the sampler's own evenly spaced steps. When set,
            ``steps_per_expert`` equals its ``steps_per_interval`` and its intervals are
            ``intervals``. Written to JSON only when set.
        base_intervals: the intervals served by the base model itself, unpruned and not
            fine-tuned, instead of their expert (joint spaces with the base as a choice: then
            "the base with fewer steps" is an allocation like any other). Their archs are the
            expert's full arch, which has the base model's MACs. Written to JSON only when
            not empty.

    Raises:
        ValueError: naming the field: entries per interval, budget ratio, or a schedule that
            disagrees with the intervals or the step counts.
    """

    method: str
    budget_ratio: float
    intervals: Intervals
    archs: tuple[Arch, ...]
    macs_per_expert: tuple[int, ...]
    steps_per_expert: tuple[int, ...]
    base_trajectory_macs: int
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    schedule: StepSchedule | None = None
    base_intervals: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = self.intervals.num_intervals
        for name in ("archs", "macs_per_expert", "steps_per_expert"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"allocation {name} has {len(getattr(self, name))} entries for {n} intervals")
        if not 0 < self.budget_ratio <= 1.0 + 1e-9:
            raise ValueError(f"budget_ratio must be in (0, 1], got {self.budget_ratio}")
        object.__setattr__(self, "archs", tuple(Arch(a) for a in self.archs))
        object.__setattr__(self, "macs_per_expert", tuple(int(m) for m in self.macs_per_expert))
        object.__setattr__(self, "steps_per_expert", tuple(int(s) for s in self.steps_per_expert))
        if self.schedule is not None:
            self._check_schedule()
        base = tuple(sorted({int(k) for k in self.base_intervals}))
        if any(not 0 <= k < n for k in base):
            raise ValueError(f"allocation base_intervals {list(base)} must be interval indices 0..{n - 1}")
        object.__setattr__(self, "base_intervals", base)

    def _check_schedule(self) -> None:
        sched = self.schedule
        if not isinstance(sched, StepSchedule):
            raise ValueError(f"allocation schedule must be a StepSchedule, got {type(sched).__name__}")
        if sched.intervals != self.intervals:
            raise ValueError(f"allocation schedule is for intervals {list(sched.intervals.boundaries)}, the "
                             f"allocation's are {list(self.intervals.boundaries)}")
        if sched.steps_per_interval != self.steps_per_expert:
            raise ValueError(f"allocation steps_per_expert {list(self.steps_per_expert)} differ from its schedule's "
                             f"steps per interval {list(sched.steps_per_interval)}")

    def timesteps(self) -> list[int] | None:
        """The schedule's sampling timesteps (descending), or None without a schedule."""
        return None if self.schedule is None else self.schedule.timesteps()

    @property
    def trajectory_macs(self) -> int:
        """Sum over sampling steps of the MACs of the expert serving each step."""
        return sum(m * s for m, s in zip(self.macs_per_expert, self.steps_per_expert))

    @property
    def achieved_ratio(self) -> float:
        """Trajectory MACs as a fraction of the base model's."""
        return self.trajectory_macs / self.base_trajectory_macs

    @property
    def feasible(self) -> bool:
        """True when the trajectory MACs do not exceed the budget."""
        return self.trajectory_macs <= self.budget_ratio * self.base_trajectory_macs + 1e-6

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; the keys ``schedule`` and ``base_intervals`` only when set."""
        out: dict[str, Any] = {
            "method": self.method,
            "budget_ratio": self.budget_ratio,
            "intervals": self.intervals.to_dict(),
            "archs": [a.to_dict() for a in self.archs],
            "macs_per_expert": list(self.macs_per_expert),
            "steps_per_expert": list(self.steps_per_expert),
            "base_trajectory_macs": self.base_trajectory_macs,
            "trajectory_macs": self.trajectory_macs,
            "achieved_ratio": self.achieved_ratio,
            "feasible": self.feasible,
            "info": self.info,
        }
        if self.schedule is not None:
            out["schedule"] = self.schedule.to_dict()
        if self.base_intervals:
            out["base_intervals"] = list(self.base_intervals)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Allocation":
        try:
            return cls(
                method=str(data["method"]),
                budget_ratio=float(data["budget_ratio"]),
                intervals=Intervals.from_dict(data["intervals"]),
                archs=tuple(Arch(a) for a in data["archs"]),
                macs_per_expert=tuple(data["macs_per_expert"]),
                steps_per_expert=tuple(data["steps_per_expert"]),
                base_trajectory_macs=int(data["base_trajectory_macs"]),
                info=dict(data.get("info", {})),
                schedule=StepSchedule.from_dict(data["schedule"]) if data.get("schedule") is not None else None,
                base_intervals=tuple(int(k) for k in data.get("base_intervals", ())),
            )
        except KeyError as e:
            raise ValueError(f"allocation JSON is missing key {e.args[0]!r}") from None

    @classmethod
    def from_json(cls, text: str) -> "Allocation":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically: a kill mid-write leaves the old file)."""
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Allocation":
        return cls.from_json(Path(path).read_text())
