"""The candidate step schedules of joint routing: a small, bounded, deterministic set per budget.

:func:`interval_step_counts` gives the step counts each interval may receive;
:func:`candidate_counts` the per-interval count vectors worth trying, per total step count (the
split proportional to the intervals' spans, which evenly spaced steps give, and its one-step
neighbours); :func:`candidate_schedules` those that fit one budget, capped and spread over the
totals, each with a spacing. :class:`JointSettings` holds the knobs (also of
:func:`router.joint.route_joint`).

Example:
    >>> from experts.intervals import Intervals
    >>> iv = Intervals(1000, (500,))
    >>> allowed = interval_step_counts(iv, 4)
    >>> allowed
    [(1, 2, 3, 4), (0, 1, 2, 3, 4)]
    >>> candidate_counts(iv, allowed, 4)[4]
    [(2, 2), (1, 3), (3, 1)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from experts.intervals import Intervals
from experts.schedule import EXPLICIT, IntervalSteps, StepSchedule
from experts.steps_space import DEFAULT_SPACINGS, interval_counts
from search_spaces.errors import UserError

__all__ = ["JointSettings", "candidate_counts", "candidate_schedules", "interval_step_counts", "neighbour_schedules"]


@dataclass(frozen=True)
class JointSettings:
    """How :func:`route_joint` builds and searches its candidate schedules.

    Attributes:
        max_steps: the most sampling steps a trajectory may use.
        counts: per-interval step-count choices (None: ``0 .. max_steps``), clipped by each
            interval's span; the lowest-noise interval keeps at least one step.
        spacings: step placements (names of :data:`experts.schedule.SPACINGS`). ``leading``
            (DDIM's default, so the base with fewer steps is a candidate) is tried first when
            present, then the others in the given order.
        max_schedules: the most candidates scored per budget (exact evaluations).
        decode_grid: agent inputs tried per schedule, log-spaced over the agent's budget range.
        calibrate_iterations: bisection steps of the agent's input after the grid, per schedule.
        base_choice: the base model may serve an interval instead of its expert: for each
            schedule whose decode leaves some experts at their full arch, the candidate with
            the base model serving those intervals is scored too (at most one more exact
            evaluation per schedule; same MACs).
        refine_evaluations: after the candidates, a bounded local search from the best one:
            its one-move neighbours (one interval's spacing changed; one step moved from one
            interval to another) are scored in turn, the first that improves becomes the
            centre, until none improves or this many more exact evaluations are spent (0: off).
            The candidates share one spacing across intervals; the neighbours need not (on the
            standard workload the walk reached, three moves from the router's pick at 0.1, a
            10x TPE search's best: bench FID 0.224 against 0.508).

    Raises:
        UserError: a count or cap out of range, no spacing.
    """

    max_steps: int
    counts: tuple[int, ...] | None = None
    spacings: tuple[str, ...] = DEFAULT_SPACINGS
    max_schedules: int = 24
    decode_grid: int = 16
    calibrate_iterations: int = 12
    base_choice: bool = False
    refine_evaluations: int = 0

    def __post_init__(self) -> None:
        if self.refine_evaluations < 0:
            raise UserError(f"refine_evaluations must be >= 0, got {self.refine_evaluations}")
        if self.max_steps < 1 or self.max_schedules < 1 or self.decode_grid < 1 or self.calibrate_iterations < 0:
            raise UserError("max_steps, max_schedules and decode_grid must be >= 1 and calibrate_iterations >= 0, "
                            f"got {self.max_steps}, {self.max_schedules}, {self.decode_grid}, "
                            f"{self.calibrate_iterations}")
        if not self.spacings:
            raise UserError("joint routing needs at least one spacing")
        if self.counts is not None and any(int(c) < 0 for c in self.counts):
            raise UserError(f"step counts must be >= 0, got {list(self.counts)}")

    def ordered_spacings(self) -> tuple[str, ...]:
        """The spacings in the order candidates are taken (``leading`` first)."""
        return tuple(sorted(self.spacings, key=lambda s: s != "leading"))


def interval_step_counts(intervals: Intervals, max_steps: int, counts: Sequence[int] | None = None
                         ) -> list[tuple[int, ...]]:
    """Allowed step counts per interval: ``counts`` (default ``0 .. max_steps``), at most
    ``max_steps`` and the interval's span; at least 1 in the lowest-noise interval.

    Raises:
        UserError: an interval left with no allowed count.
    """
    try:
        return interval_counts(intervals, None if counts is None else tuple(counts), max_steps=int(max_steps))
    except ValueError as exc:  # the rule is experts'; the router reports it as a user error
        raise UserError(str(exc)) from None


def _nearest(allowed: Sequence[Sequence[int]], target: Sequence[float], n: int) -> tuple[int, ...]:
    """Counts from ``allowed`` close to ``target`` with a total as close to ``n`` as the choices allow."""
    c = [max([a for a in ch if a <= t] or [ch[0]]) for ch, t in zip(allowed, target)]
    for _ in range(sum(len(ch) for ch in allowed)):  # bounded: each pass moves one choice
        total = sum(c)
        ups = [(target[k] - c[k], -k) for k, ch in enumerate(allowed)
               if (nxt := [a for a in ch if a > c[k]]) and total - c[k] + nxt[0] <= n]
        if total >= n or not ups:
            break
        k = -max(ups)[1]
        c[k] = min(a for a in allowed[k] if a > c[k])
    return tuple(c)


def candidate_counts(intervals: Intervals, allowed: Sequence[Sequence[int]], max_steps: int
                     ) -> dict[int, list[tuple[int, ...]]]:
    """Per total step count, per-interval count vectors, best first.

    For each total ``n``: the counts proportional to the intervals' spans (what evenly spaced
    steps give), snapped to the allowed choices, then its neighbours (one interval one choice
    down, another one choice up). Within a total, ordered by L1 distance to the proportional
    counts, then lexicographically. At most ``max_steps x (1 + K (K - 1))`` vectors.
    """
    spans = intervals.spans()
    T = float(sum(hi - lo for lo, hi in spans))
    vectors: set[tuple[int, ...]] = set()
    for n in range(1, int(max_steps) + 1):
        base = _nearest(allowed, [n * (hi - lo) / T for lo, hi in spans], n)
        vectors.add(base)
        for i, j in ((i, j) for i in range(len(base)) for j in range(len(base)) if i != j):
            down = [a for a in allowed[i] if a < base[i]]
            up = [a for a in allowed[j] if a > base[j]]
            if down and up:
                v = list(base)
                v[i], v[j] = down[-1], up[0]
                vectors.add(tuple(v))
    by_total: dict[int, list[tuple[int, ...]]] = {}
    for v in vectors:
        if 1 <= sum(v) <= max_steps:
            by_total.setdefault(sum(v), []).append(v)
    for m, vs in by_total.items():
        target = [m * (hi - lo) / T for lo, hi in spans]
        vs.sort(key=lambda v: (sum(abs(a - t) for a, t in zip(v, target)), v))
    return dict(sorted(by_total.items()))


def candidate_schedules(intervals: Intervals, by_total: Mapping[int, Sequence[tuple[int, ...]]],
                        settings: JointSettings, budget_macs: float, full_macs: Sequence[float],
                        smallest_macs: Sequence[float]) -> tuple[list[StepSchedule], int]:
    """The schedules scored for one budget, and how many fit it before the cap.

    Kept: count vectors whose trajectory fits ``budget_macs`` with the smallest experts, except
    those with fewer steps than the largest total that fits at full width. If more totals remain
    than ``max_schedules // len(spacings)``, totals evenly spread over them are kept, so that
    every kept total is tried in every spacing. Then candidates are taken round-robin over the
    totals (largest first), the ``r``-th count vector of each total in every spacing before the
    ``r + 1``-th: the placement of the steps matters more than a one-step shift between intervals
    (on the standard workload the search's best schedule at every budget was the router's counts,
    or their neighbours, placed ``uniform`` rather than ``leading``: FID 0.44 vs 1.12 at 0.1 with
    the same [1, 2, 2] steps). A schedule whose timesteps an earlier one already has (spacings
    that agree, e.g. on one step) is skipped.
    """
    def cost(v: Sequence[int], macs: Sequence[float]) -> float:
        return sum(c * m for c, m in zip(v, macs))

    fits = {n: [v for v in vs if cost(v, smallest_macs) <= budget_macs + 1e-9] for n, vs in by_total.items()}
    fits = {n: vs for n, vs in fits.items() if vs}
    at_full = [n for n, vs in fits.items() if any(cost(v, full_macs) <= budget_macs + 1e-9 for v in vs)]
    if at_full:
        fits = {n: vs for n, vs in fits.items() if n >= max(at_full)}
    spacings = settings.ordered_spacings()
    considered = sum(len(vs) for vs in fits.values()) * len(spacings)
    totals = sorted(fits, reverse=True)
    cap = settings.max_schedules
    n_totals = max(1, cap // len(spacings))
    if len(totals) > n_totals:
        totals = ([totals[round(i * (len(totals) - 1) / (n_totals - 1))] for i in range(n_totals)]
                  if n_totals > 1 else totals[:1])
        totals = list(dict.fromkeys(totals))
    levels = [(r, s) for r in range(max((len(fits[n]) for n in totals), default=0)) for s in range(len(spacings))]
    out: list[StepSchedule] = []
    seen: set[tuple[int, ...]] = set()  # spacings that place the steps alike (e.g. one step) count once
    for r, s in levels:
        for n in totals:
            if len(out) >= cap:
                return out, considered
            if r < len(fits[n]):
                sched = StepSchedule.from_counts(intervals, fits[n][r], spacings[s])
                if tuple(sched.timesteps()) not in seen:
                    seen.add(tuple(sched.timesteps()))
                    out.append(sched)
    return out, considered


def neighbour_schedules(schedule: StepSchedule, allowed: Sequence[Sequence[int]], spacings: Sequence[str]
                        ) -> list[StepSchedule]:
    """The one-move neighbours of ``schedule``: one interval's spacing changed to another of
    ``spacings`` (an interval with steps; explicit timesteps are left alone), then one interval's
    count one allowed choice down and another's one choice up (spacings kept). Schedules that
    break a rule of :class:`~experts.schedule.StepSchedule` are left out.

    Example:
        >>> from experts.intervals import Intervals
        >>> iv = Intervals(1000, (500,))
        >>> s = StepSchedule.from_counts(iv, (2, 2), "uniform")
        >>> [(n.steps_per_interval, [p.spacing for p in n.parts])
        ...  for n in neighbour_schedules(s, [(1, 2, 3), (0, 1, 2, 3)], ("uniform", "trailing"))]
        [((2, 2), ['trailing', 'uniform']), ((2, 2), ['uniform', 'trailing']), ((1, 3), ['uniform', 'uniform']), ((3, 1), ['uniform', 'uniform'])]
    """
    parts = list(schedule.parts)
    moves: list[list[IntervalSteps]] = []
    for k, part in enumerate(parts):  # placement first: it matters more than a one-step shift
        if part.count > 0 and part.spacing != EXPLICIT:
            for name in spacings:
                if name != part.spacing:
                    v = list(parts)
                    v[k] = IntervalSteps(part.count, name)
                    moves.append(v)
    for i, j in ((i, j) for i in range(len(parts)) for j in range(len(parts)) if i != j):
        if EXPLICIT in (parts[i].spacing, parts[j].spacing):
            continue
        down = [a for a in allowed[i] if a < parts[i].count]
        up = [a for a in allowed[j] if a > parts[j].count]
        if down and up:
            v = list(parts)
            v[i], v[j] = IntervalSteps(down[-1], parts[i].spacing), IntervalSteps(up[0], parts[j].spacing)
            moves.append(v)
    out = []
    for v in moves:
        try:
            out.append(StepSchedule(schedule.intervals, tuple(v), end_in_lowest=schedule.end_in_lowest))
        except ValueError:
            continue
    return out
