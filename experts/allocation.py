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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experts.intervals import Intervals, atomic_write_text
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
    """

    method: str
    budget_ratio: float
    intervals: Intervals
    archs: tuple[Arch, ...]
    macs_per_expert: tuple[int, ...]
    steps_per_expert: tuple[int, ...]
    base_trajectory_macs: int
    info: dict[str, Any] = field(default_factory=dict, compare=False)

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
        return {
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
