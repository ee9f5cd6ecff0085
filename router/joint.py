"""Routing on the joint step-and-expert space: a trained width agent, a bounded set of step
schedules, and one exact trajectory-proxy evaluation per candidate.

The trajectory proxy (e.g. a small-sample FID of the candidate's samples) sees the error of
fewer or differently placed steps, but it is not differentiable, and the held-out loss the agent
is trained on cannot see steps. So the step schedule is not a token of the agent; per budget
``b`` (a fraction of the base model's trajectory MACs):

1. :func:`candidate_schedules`: a small, bounded set of step schedules (per-interval counts from
   the allowed choices with at most ``max_steps`` in total, times the spacings), pruned to those
   whose trajectory fits ``b`` with every expert at its smallest arch, and capped at
   ``max_schedules``, spread over the total step counts. Schedules with fewer steps than the
   largest total that fits at full width are dropped (full width at more steps dominates them:
   the budget they leave cannot be spent).
2. For each schedule ``S``: the budget-conditioned agent decodes the expert widths at the input
   budget whose decode makes ``sum_k S_k x MACs_k(arch_k) <= b x base`` as tight as possible
   (bisection on the decode's exact MACs, :func:`router.feasibility.calibrate_budget`; no loss
   evaluation). A decode still over the budget is repaired down greedily by the agent's own
   log-probabilities (bounded, no loss evaluation).
3. Each ``(S, archs)`` candidate is scored once by the caller's ``scorer`` (lower is better);
   identical candidates of different budgets are scored once. The best is kept.

The router never imports ``nas``: the scorer arrives as a callable
(``scorer(schedule, archs) -> CandidateScore | float``). The cost (decodes, proxy evaluations
and seconds per budget) is recorded in :class:`JointOutcome` and each allocation's ``info``.

Example:
    >>> from experts.intervals import Intervals
    >>> interval_step_counts(Intervals(1000, (300,)), 4)
    [(1, 2, 3, 4), (0, 1, 2, 3, 4)]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from experts.allocation import Allocation
from experts.intervals import Intervals
from experts.mixture_space import MixtureSpace
from experts.schedule import StepSchedule
from experts.steps_space import DEFAULT_SPACINGS
from router.agent import ExpertRoutingAgent
from router.feasibility import calibrate_budget, logit_scorer, make_feasible
from search_spaces import Arch
from search_spaces.errors import UserError

__all__ = [
    "CandidateScore",
    "JointCandidate",
    "JointOutcome",
    "JointSettings",
    "Scorer",
    "candidate_counts",
    "candidate_schedules",
    "interval_step_counts",
    "joint_allocation",
    "route_joint",
    "smallest_trajectory_macs",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateScore:
    """What a scorer says of one candidate.

    Attributes:
        value: the proxy value (lower is better).
        details: anything worth recording beside it (e.g. the other proxy's value).
    """

    value: float
    details: Mapping[str, Any] = field(default_factory=dict)


#: ``scorer(schedule, archs) -> CandidateScore | float``: one exact evaluation of a candidate.
Scorer = Callable[[StepSchedule, Sequence[Arch]], "CandidateScore | float"]


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
        calibrate_iterations: bisection steps of the agent's input budget per schedule.

    Raises:
        UserError: a count or cap out of range, no spacing.
    """

    max_steps: int
    counts: tuple[int, ...] | None = None
    spacings: tuple[str, ...] = DEFAULT_SPACINGS
    max_schedules: int = 24
    calibrate_iterations: int = 24

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.max_schedules < 1 or self.calibrate_iterations < 0:
            raise UserError("max_steps and max_schedules must be >= 1 and calibrate_iterations >= 0, got "
                            f"{self.max_steps}, {self.max_schedules}, {self.calibrate_iterations}")
        if not self.spacings:
            raise UserError("joint routing needs at least one spacing")
        if self.counts is not None and any(int(c) < 0 for c in self.counts):
            raise UserError(f"step counts must be >= 0, got {list(self.counts)}")

    def ordered_spacings(self) -> tuple[str, ...]:
        """The spacings in the order candidates are taken (``leading`` first)."""
        return tuple(sorted(self.spacings, key=lambda s: s != "leading"))


@dataclass(frozen=True)
class JointCandidate:
    """One scored ``(schedule, expert archs)`` candidate of one budget.

    Attributes:
        schedule: its step schedule.
        arch: the mixture arch (keys ``e0/...``) the agent decoded for it.
        macs: its trajectory MACs (steps x MACs per call, summed over intervals).
        agent_budget_ratio: the agent's input budget of the decode.
        repaired: the decode was over the budget and was repaired down.
        score: the scorer's verdict.
        cached: the same candidate was scored for another budget (no new evaluation).
    """

    schedule: StepSchedule
    arch: Arch
    macs: int
    agent_budget_ratio: float
    repaired: bool
    score: CandidateScore
    cached: bool = False

    def record(self, base_macs: float) -> dict[str, Any]:
        """Compact JSON-ready record (for an allocation's ``info``)."""
        return {"steps_per_interval": list(self.schedule.steps_per_interval),
                "spacings": [p.spacing for p in self.schedule.parts], "macs_ratio": self.macs / base_macs,
                "agent_budget_ratio": self.agent_budget_ratio, "repaired": self.repaired,
                "value": self.score.value}


@dataclass(frozen=True)
class JointOutcome:
    """The best candidate of one budget and what finding it cost.

    Attributes:
        budget_ratio: the target (fraction of the base trajectory MACs).
        best: the candidate with the lowest score.
        candidates: every candidate scored for this budget, in the order tried.
        schedules_considered: schedules that fit the budget at the smallest experts (before the cap).
        decodes: agent decodes (forward passes of the agent; no model evaluation).
        evaluations: new scorer calls (exact evaluations; cached candidates excluded).
        decode_seconds: wall time of the decodes and repairs.
        proxy_seconds: wall time of the scorer calls.
    """

    budget_ratio: float
    best: JointCandidate
    candidates: tuple[JointCandidate, ...]
    schedules_considered: int
    decodes: int
    evaluations: int
    decode_seconds: float
    proxy_seconds: float


def interval_step_counts(intervals: Intervals, max_steps: int, counts: Sequence[int] | None = None
                         ) -> list[tuple[int, ...]]:
    """Allowed step counts per interval: ``counts`` (default ``0 .. max_steps``), at most
    ``max_steps`` and the interval's span; at least 1 in the lowest-noise interval.

    Raises:
        UserError: an interval left with no allowed count.
    """
    pool = sorted({int(c) for c in (range(int(max_steps) + 1) if counts is None else counts)})
    out = []
    for k, (lo, hi) in enumerate(intervals.spans()):
        allowed = tuple(c for c in pool if c <= min(int(max_steps), hi - lo) and (k > 0 or c >= 1))
        if not allowed:
            raise UserError(f"interval {k} [{lo}, {hi}) has no allowed step count among {pool} "
                            f"(at most {max_steps}, at least 1 in the lowest-noise interval)")
        out.append(allowed)
    return out


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
    than ``max_schedules``, totals evenly spread over them are kept. Then candidates are taken
    round-robin over the totals (largest first), level by level: level ``r + s`` holds the
    ``r``-th count vector of a total with the ``s``-th spacing.
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
    if len(totals) > cap:
        totals = [totals[round(i * (len(totals) - 1) / (cap - 1))] for i in range(cap)] if cap > 1 else totals[:1]
        totals = list(dict.fromkeys(totals))
    levels = sorted(((r, s) for r in range(max((len(fits[n]) for n in totals), default=0))
                     for s in range(len(spacings))), key=lambda x: (x[0] + x[1], x[1]))
    out: list[StepSchedule] = []
    for r, s in levels:
        for n in totals:
            if len(out) >= cap:
                return out, considered
            if r < len(fits[n]):
                out.append(StepSchedule.from_counts(intervals, fits[n][r], spacings[s]))
    return out, considered


def _as_score(value: CandidateScore | float) -> CandidateScore:
    if isinstance(value, CandidateScore):
        return value
    return CandidateScore(float(value))


def smallest_trajectory_macs(mixture: MixtureSpace, allowed_counts: Sequence[Sequence[int]]) -> float:
    """The cheapest trajectory of the joint space: each interval's fewest allowed steps, every
    expert at its smallest arch (a budget below it has no allocation)."""
    return float(sum(min(a) * p.macs(p.smallest()) for a, p in zip(allowed_counts, mixture.parts)))


def _candidate_key(schedule: StepSchedule, arch: Arch) -> tuple[Any, ...]:
    return (tuple((p.count, p.spacing, p.timesteps) for p in schedule.parts), arch)


def _sort_value(c: JointCandidate) -> float:
    v = float(c.score.value)
    return math.inf if math.isnan(v) else v


@dataclass(frozen=True)
class _Decoder:
    """Decodes the agent's expert widths for one step schedule (see the module docstring)."""

    agent: ExpertRoutingAgent
    mixture: MixtureSpace
    budget_range: tuple[float, float]
    iterations: int

    def __call__(self, schedule: StepSchedule, budget_macs: float) -> tuple[Arch, int, float, bool, int]:
        """``(mixture arch, trajectory MACs, agent input budget, repaired, decodes)``."""
        space = MixtureSpace(self.mixture.parts, schedule.steps_per_interval, self.mixture.intervals).space
        full = space.full()
        full_macs = space.macs(full)
        if full_macs <= budget_macs + 1e-9:  # every expert at full width fits: nothing to decode
            return full, full_macs, 1.0, False, 0
        lo, hi = self.budget_range
        start = min(max(budget_macs / full_macs, lo), hi)  # the width fraction the budget leaves
        p, arch = calibrate_budget(space, self.agent, start, budget_macs, (lo, hi), self.iterations)
        decodes = self.iterations + 2
        repaired = space.macs(arch) > budget_macs + 1e-9
        if repaired:  # bounded: one choice step per move, scored by the agent (no evaluation)
            arch = make_feasible(space, arch, budget_macs, logit_scorer(space, self.agent, p), fill=False,
                                 exchange=False)[0]
            decodes += 1
        return arch, space.macs(arch), p, repaired, decodes


def route_joint(
    agent: ExpertRoutingAgent,
    mixture: MixtureSpace,
    budgets: Sequence[float],
    scorer: Scorer,
    settings: JointSettings,
    *,
    base_trajectory_macs: float,
    budget_range: Sequence[float],
    allowed_counts: Sequence[Sequence[int]] | None = None,
) -> list[JointOutcome]:
    """The best ``(step schedule, expert archs)`` per budget (see the module docstring).

    Args:
        agent: a budget-conditioned agent trained on ``mixture.space`` (its decode's input is a
            fraction of ``base_trajectory_macs`` at the mixture's own step counts).
        mixture: the experts' mixture space (expert spaces and intervals; its step counts are
            those the agent was trained with).
        budgets: fractions of ``base_trajectory_macs``.
        scorer: ``scorer(schedule, expert archs) -> CandidateScore | float``, lower is better.
        settings: the candidate schedules and the bisection.
        base_trajectory_macs: the base model's trajectory MACs (what ratio 1 means).
        budget_range: the agent inputs the bisection may use, ``(low, high)``.
        allowed_counts: the step counts each interval may receive (default:
            :func:`interval_step_counts` of ``settings``).

    Raises:
        UserError: a budget that no step schedule fits, even with the smallest experts.
    """
    lo, hi = (float(x) for x in budget_range)
    decoder = _Decoder(agent, mixture, (lo, hi), int(settings.calibrate_iterations))
    allowed = (interval_step_counts(mixture.intervals, settings.max_steps, settings.counts)
               if allowed_counts is None else [tuple(int(c) for c in a) for a in allowed_counts])
    by_total = candidate_counts(mixture.intervals, allowed, settings.max_steps)
    full = [float(p.macs(p.full())) for p in mixture.parts]
    small = [float(p.macs(p.smallest())) for p in mixture.parts]
    cache: dict[tuple[Any, ...], CandidateScore] = {}
    outcomes = []
    for b in budgets:
        budget_macs = float(b) * float(base_trajectory_macs)
        schedules, considered = candidate_schedules(mixture.intervals, by_total, settings, budget_macs, full, small)
        if not schedules:
            raise UserError(f"budget {b:g}: no step schedule of at most {settings.max_steps} steps fits it, even "
                            "with every expert at its smallest arch")
        outcomes.append(_route_budget(float(b), schedules, considered, decoder, scorer, budget_macs, cache))
        o = outcomes[-1]
        log.info("joint router budget %g: %d schedules scored (%d new evaluations, %.1f s) of %d that fit; best "
                 "steps %s (%s) at MACs ratio %.4f, proxy %.4g", b, len(o.candidates), o.evaluations,
                 o.proxy_seconds, considered, list(o.best.schedule.steps_per_interval),
                 ",".join(p.spacing for p in o.best.schedule.parts), o.best.macs / base_trajectory_macs,
                 o.best.score.value)
    return outcomes


def _route_budget(b: float, schedules: Sequence[StepSchedule], considered: int, decoder: _Decoder,
                  scorer: Scorer, budget_macs: float, cache: dict[tuple[Any, ...], CandidateScore]) -> JointOutcome:
    """Decode and score each schedule of one budget; the best (first on ties) wins."""
    decode_s = proxy_s = 0.0
    decodes = evaluations = 0
    candidates = []
    for schedule in schedules:
        t0 = time.perf_counter()
        arch, macs, p, repaired, n = decoder(schedule, budget_macs)
        decode_s += time.perf_counter() - t0
        decodes += n
        key = _candidate_key(schedule, arch)
        cached = key in cache
        if not cached:
            t1 = time.perf_counter()
            cache[key] = _as_score(scorer(schedule, decoder.mixture.split(arch)))
            proxy_s += time.perf_counter() - t1
            evaluations += 1
        candidates.append(JointCandidate(schedule, arch, int(macs), float(p), repaired, cache[key], cached))
    best = min(candidates, key=_sort_value)
    return JointOutcome(b, best, tuple(candidates), considered, decodes, evaluations, decode_s, proxy_s)


def joint_allocation(outcome: JointOutcome, mixture: MixtureSpace, *, base_trajectory_macs: float,
                     train_seconds: float = 0.0, train_evaluations: int = 0, method: str = "router",
                     info: Mapping[str, Any] | None = None) -> Allocation:
    """The :class:`~experts.allocation.Allocation` (with its step schedule) of one budget's best
    candidate; ``info`` records the search and its cost beside ``info`` given here.

    ``cost`` counts the agent's (shared) training once per budget plus this budget's decodes
    and proxy evaluations; ``proxy_evaluations`` are the exact evaluations.
    """
    best = outcome.best
    sched = best.schedule
    record = {
        "joint": True,
        "train_seconds": train_seconds,
        "train_evaluations": train_evaluations,
        "decodes": outcome.decodes,
        "decode_seconds": outcome.decode_seconds,
        "proxy_evaluations": outcome.evaluations,
        "proxy_seconds": outcome.proxy_seconds,
        "schedules_considered": outcome.schedules_considered,
        "schedules_scored": len(outcome.candidates),
        "agent_budget_ratio": best.agent_budget_ratio,
        "repaired": best.repaired,
        "proxy_value": best.score.value,
        "proxy_details": dict(best.score.details),
        "candidates": [c.record(base_trajectory_macs) for c in outcome.candidates],
        "cost": {"wall_s": train_seconds + outcome.decode_seconds + outcome.proxy_seconds,
                 "evaluations": train_evaluations + outcome.evaluations,
                 "proxy_evaluations": outcome.evaluations},
        **dict(info or {}),
    }
    per_schedule = MixtureSpace(mixture.parts, sched.steps_per_interval, mixture.intervals)
    alloc = per_schedule.to_allocation(best.arch, method=method, budget_ratio=outcome.budget_ratio,
                                       base_trajectory_macs=base_trajectory_macs, info=record)
    return dataclasses.replace(alloc, schedule=sched)
