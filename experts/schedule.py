"""Step schedules: how many sampling steps each interval receives and where they fall.

A :class:`StepSchedule` gives, per interval of an :class:`~experts.intervals.Intervals`
(training timestep units), an :class:`IntervalSteps`: a step count and a placement inside the
interval (one of :data:`SPACINGS`, or explicit timesteps). Its :meth:`~StepSchedule.timesteps`
is the strictly descending list of training timesteps a sampler visits, so a mixture routing on
``t`` sends each step to the expert owning it.

Placement of ``n`` steps in the interval ``[lo, hi)`` of width ``w = hi - lo`` (ascending
``i = 0 .. n-1``; the names follow diffusers' ``timestep_spacing``, Lin et al. 2023, Table 2):

- ``leading``: ``lo + floor(i * w / n)``: evenly spaced, the lowest step at ``lo``. When the
  interval boundaries lie on the grid of DDIM's default ``leading`` schedule, the per-interval
  ``leading`` placement reproduces it (the uniform schedule is a point of the space).
- ``trailing``: ``lo + ceil((i + 1) * w / n) - 1``: evenly spaced, the highest step at
  ``hi - 1`` (for the highest interval: the sampler starts at ``T - 1``, pure noise).
- ``uniform``: ``lo + floor((i + 0.5) * w / n)``: evenly spaced, centred in the interval.
- ``quadratic``: ``lo + ceil(((i + 1) / n) ** 2 * w) - 1``: denser toward low noise (DDIM's
  quadratic skip, Song et al. 2021), the highest step at ``hi - 1``.

Rounding collisions are resolved by moving steps apart inside the interval. An interval may
receive 0 steps, except the lowest-noise interval (the one holding ``t = 0``, visited last):
the trajectory must end there (``end_in_lowest``, the rule of every searched schedule). A
schedule taken from a sampler's own list may break it (DDIM with ``trailing`` spacing and 3
steps visits 999, 666, 332: its last step jumps from 332 to the clean sample), so
:meth:`StepSchedule.from_timesteps` lifts the rule when the list does; the schedule still needs
at least one step.

Example:
    >>> from experts.intervals import Intervals
    >>> s = StepSchedule(Intervals(1000, (300, 700)),
    ...                  (IntervalSteps(3), IntervalSteps(0), IntervalSteps(2, "trailing")))
    >>> s.timesteps()
    [999, 849, 200, 100, 0]
    >>> s.steps_per_interval
    (3, 0, 2)
    >>> StepSchedule.from_json(s.to_json()) == s
    True
    >>> StepSchedule.from_uniform(Intervals(1000, (300, 700)), 4).timesteps()
    [750, 500, 250, 0]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experts.intervals import Intervals, atomic_write_text

__all__ = ["EXPLICIT", "SPACINGS", "IntervalSteps", "StepSchedule", "place_steps", "uniform_timesteps"]

#: Placements of the steps inside an interval (see the module docstring).
SPACINGS: tuple[str, ...] = ("leading", "trailing", "uniform", "quadratic")
#: The spacing name of an interval whose timesteps are given explicitly.
EXPLICIT = "explicit"

FORMAT = "diffnas-step-schedule"
VERSION = 1


def _raw_positions(n: int, lo: int, hi: int, spacing: str) -> list[int]:
    w = hi - lo
    if spacing == "leading":
        return [lo + (i * w) // n for i in range(n)]
    if spacing == "trailing":
        return [lo + math.ceil((i + 1) * w / n) - 1 for i in range(n)]
    if spacing == "uniform":
        return [lo + math.floor((i + 0.5) * w / n) for i in range(n)]
    if spacing == "quadratic":
        return [lo + math.ceil(((i + 1) / n) ** 2 * w) - 1 for i in range(n)]
    raise ValueError(f"unknown spacing {spacing!r}; choices: {', '.join(SPACINGS)} (or explicit timesteps)")


def place_steps(n: int, lo: int, hi: int, spacing: str) -> list[int]:
    """``n`` distinct training timesteps in ``[lo, hi)`` placed by ``spacing``, ascending.

    Raises:
        ValueError: unknown spacing, or more steps than the interval has timesteps.

    Example:
        >>> place_steps(4, 0, 1000, "leading"), place_steps(3, 0, 10, "quadratic")
        ([0, 250, 500, 750], [1, 4, 9])
    """
    n, lo, hi = int(n), int(lo), int(hi)
    if n < 0:
        raise ValueError(f"a step count must be >= 0, got {n}")
    if n > hi - lo:
        raise ValueError(f"{n} steps do not fit in the {hi - lo} timesteps of [{lo}, {hi})")
    t = _raw_positions(n, lo, hi, spacing)
    for i in range(n):  # push apart upward, then pull back below hi: distinct and inside
        t[i] = max(t[i], lo if i == 0 else t[i - 1] + 1)
    for i in reversed(range(n)):
        t[i] = min(t[i], hi - 1 if i == n - 1 else t[i + 1] - 1)
    return t


def uniform_timesteps(num_steps: int, num_train_timesteps: int, *, timestep_spacing: str = "leading",
                      steps_offset: int = 0) -> list[int]:
    """The timesteps of diffusers' ``DDIMScheduler.set_timesteps(num_steps)``, descending.

    The same integer arithmetic as diffusers 0.42 (``linspace``, ``leading``, ``trailing``),
    without building a scheduler.

    Example:
        >>> uniform_timesteps(4, 1000), uniform_timesteps(4, 1000, timestep_spacing="trailing")
        ([750, 500, 250, 0], [999, 749, 499, 249])
    """
    import numpy as np

    n, T = int(num_steps), int(num_train_timesteps)
    if not 1 <= n <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
    if timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    elif timestep_spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64) + int(steps_offset)
    elif timestep_spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    else:
        raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; choices: linspace, leading, trailing")
    return [int(t) for t in ts]


@dataclass(frozen=True)
class IntervalSteps:
    """The steps one interval receives.

    Attributes:
        count: number of sampling steps (model calls) in the interval; may be 0.
        spacing: one of :data:`SPACINGS`, or :data:`EXPLICIT` with ``timesteps``.
        timesteps: for ``explicit``: the training timesteps, any order (stored descending).
    """

    count: int
    spacing: str = "leading"
    timesteps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.timesteps is not None:
            ts = tuple(sorted({int(t) for t in self.timesteps}, reverse=True))
            if len(ts) != len(self.timesteps):
                raise ValueError(f"explicit timesteps repeat a value: {list(self.timesteps)}")
            if int(self.count) != len(ts):
                raise ValueError(f"count {self.count} differs from the {len(ts)} explicit timesteps")
            if self.spacing != EXPLICIT:
                raise ValueError(f"explicit timesteps need spacing {EXPLICIT!r}, got {self.spacing!r}")
            object.__setattr__(self, "timesteps", ts)
        elif self.spacing == EXPLICIT:
            raise ValueError(f"spacing {EXPLICIT!r} needs timesteps")
        elif self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {self.spacing!r}; choices: {', '.join(SPACINGS)} or {EXPLICIT!r}")
        if int(self.count) < 0:
            raise ValueError(f"a step count must be >= 0, got {self.count}")
        object.__setattr__(self, "count", int(self.count))

    @classmethod
    def explicit(cls, timesteps: Sequence[int]) -> "IntervalSteps":
        """Steps at the given training timesteps."""
        return cls(len(timesteps), EXPLICIT, tuple(int(t) for t in timesteps))

    def place(self, lo: int, hi: int) -> list[int]:
        """The timesteps in ``[lo, hi)``, descending (ValueError if explicit ones fall outside)."""
        if self.timesteps is not None:
            outside = [t for t in self.timesteps if not lo <= t < hi]
            if outside:
                raise ValueError(f"explicit timestep {outside[0]} is outside the interval [{lo}, {hi})")
            return list(self.timesteps)
        return place_steps(self.count, lo, hi, self.spacing)[::-1]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "spacing": self.spacing}
        if self.timesteps is not None:
            out["timesteps"] = list(self.timesteps)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "IntervalSteps":
        ts = data.get("timesteps")
        return cls(int(data["count"]), str(data.get("spacing", "leading")), None if ts is None else tuple(ts))


@dataclass(frozen=True)
class StepSchedule:
    """Per interval, the sampling steps it receives (count and placement).

    Attributes:
        intervals: the experts' intervals (training timestep units).
        parts: one :class:`IntervalSteps` per interval, in interval order (lowest noise first,
            as :meth:`Intervals.spans`).
        end_in_lowest: the rule that interval 0 (the lowest-noise one, where the trajectory
            ends) keeps at least one step; on by default.

    Raises:
        ValueError: naming the interval and the rule: wrong number of parts, more steps than
            an interval has timesteps, explicit timesteps outside their interval, 0 steps
            in interval 0 while ``end_in_lowest``, or no step at all.
    """

    intervals: Intervals
    parts: tuple[IntervalSteps, ...]
    end_in_lowest: bool = True

    def __post_init__(self) -> None:
        parts = tuple(p if isinstance(p, IntervalSteps) else IntervalSteps.from_dict(p) for p in self.parts)
        object.__setattr__(self, "parts", parts)
        n = self.intervals.num_intervals
        if len(parts) != n:
            raise ValueError(f"a step schedule needs one entry per interval: got {len(parts)} for {n} intervals")
        if sum(p.count for p in parts) < 1:
            raise ValueError("a step schedule needs at least one step in total")
        if parts[0].count < 1 and self.end_in_lowest:
            lo, hi = self.intervals.spans()[0]
            raise ValueError(
                f"interval 0 [{lo}, {hi}) has 0 steps: the lowest-noise interval (holding t=0) must keep "
                f"at least one step (rule end_in_lowest), so the trajectory ends with its expert"
            )
        for k, (p, (lo, hi)) in enumerate(zip(parts, self.intervals.spans())):
            try:
                p.place(lo, hi)
            except ValueError as e:
                raise ValueError(f"interval {k} [{lo}, {hi}): {e}") from None

    # ----------------------------------------------------------------- views
    @property
    def steps_per_interval(self) -> tuple[int, ...]:
        """Step count per interval (the weight of each expert's MACs in the trajectory)."""
        return tuple(p.count for p in self.parts)

    @property
    def num_steps(self) -> int:
        """Total sampling steps (model calls per image)."""
        return sum(self.steps_per_interval)

    def timesteps(self) -> list[int]:
        """All sampling timesteps, strictly descending (the order a sampler visits them)."""
        out: list[int] = []
        for p, (lo, hi) in reversed(list(zip(self.parts, self.intervals.spans()))):
            out.extend(p.place(lo, hi))
        return out

    def trajectory_macs(self, macs_per_call: Sequence[int]) -> int:
        """Sum over intervals of steps x the MACs of one call of that interval's expert."""
        if len(macs_per_call) != len(self.parts):
            raise ValueError(f"got {len(macs_per_call)} MACs for {len(self.parts)} intervals")
        return int(sum(int(m) * s for m, s in zip(macs_per_call, self.steps_per_interval)))

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_timesteps(cls, intervals: Intervals, timesteps: Sequence[int], *,
                       end_in_lowest: bool | None = None) -> "StepSchedule":
        """Explicit steps per interval from a list of training timesteps (any order).

        ``end_in_lowest=None``: the rule holds when the list has a step in interval 0.
        """
        buckets: list[list[int]] = [[] for _ in range(intervals.num_intervals)]
        for t in timesteps:
            buckets[intervals.index(int(t))].append(int(t))
        rule = bool(buckets[0]) if end_in_lowest is None else bool(end_in_lowest)
        return cls(intervals, tuple(IntervalSteps.explicit(b) if b else IntervalSteps(0) for b in buckets), rule)

    @classmethod
    def from_uniform(cls, intervals: Intervals, num_steps: int, *,
                     scheduler_config: Mapping[str, Any] | None = None) -> "StepSchedule":
        """The schedule DDIM visits with ``num_steps`` evenly spaced steps.

        Equals ``nas.sampling.sampling_timesteps(make_scheduler("ddim", scheduler_config),
        num_steps)``: ``timestep_spacing`` and ``steps_offset`` are read from
        ``scheduler_config`` (diffusers' defaults ``leading`` and 0 when absent).
        """
        cfg = dict(scheduler_config or {})
        ts = uniform_timesteps(num_steps, intervals.num_train_timesteps,
                               timestep_spacing=str(cfg.get("timestep_spacing", "leading")),
                               steps_offset=int(cfg.get("steps_offset", 0)))
        return cls.from_timesteps(intervals, ts)

    @classmethod
    def from_counts(cls, intervals: Intervals, counts: Sequence[int],
                    spacing: str | Sequence[str] = "leading") -> "StepSchedule":
        """``counts[k]`` steps in interval ``k``, placed by ``spacing`` (one, or one per interval)."""
        spacings = [spacing] * len(counts) if isinstance(spacing, str) else list(spacing)
        if len(spacings) != len(counts):
            raise ValueError(f"got {len(spacings)} spacings for {len(counts)} step counts")
        return cls(intervals, tuple(IntervalSteps(int(c), s) for c, s in zip(counts, spacings)))

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "intervals": self.intervals.to_dict(),
                "parts": [p.to_dict() for p in self.parts], "end_in_lowest": self.end_in_lowest,
                "timesteps": self.timesteps()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StepSchedule":
        if data.get("format", FORMAT) != FORMAT or int(data.get("version", VERSION)) > VERSION:
            raise ValueError(f"unsupported step schedule format {data.get('format')!r} version {data.get('version')!r}")
        try:
            return cls(Intervals.from_dict(data["intervals"]), tuple(IntervalSteps.from_dict(p) for p in data["parts"]),
                       bool(data.get("end_in_lowest", True)))
        except KeyError as e:
            raise ValueError(f"step schedule JSON is missing key {e.args[0]!r}") from None

    @classmethod
    def from_json(cls, text: str) -> "StepSchedule":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically: a kill mid-write leaves the old file)."""
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "StepSchedule":
        return cls.from_json(Path(path).read_text())
