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
   (a log-spaced grid of inputs, then bisection, on the decode's exact MACs; no loss
   evaluation). A decode still over the budget is repaired down greedily by the agent's own
   log-probabilities (bounded, no loss evaluation).
3. Each ``(S, archs)`` candidate is scored once by the caller's ``scorer`` (lower is better);
   identical candidates of different budgets are scored once. The best is kept. With
   ``base_choice``, a decode that leaves experts at their full arch is scored a second time with
   the base model serving those intervals (an arch ``None`` for the scorer): the same MACs, and
   "the base with fewer steps" among the candidates.

The router never imports ``nas``: the scorer arrives as a callable
(``scorer(schedule, archs) -> CandidateScore | float``). The cost (decodes, proxy evaluations
and seconds per budget) is recorded in :class:`JointOutcome` and each allocation's ``info``.

The candidate schedules and the settings live in :mod:`router.schedules`.

Example:
    >>> from router.synthetic import SyntheticMixture
    >>> from router.train import fit_agents
    >>> from router.settings import RouterSettings
    >>> bench = SyntheticMixture.default(seed=0, num_experts=2, num_blocks=2, num_skips=1)
    >>> fit = fit_agents(bench.space, bench.task_loss, [0.2, 1.0],
    ...                  RouterSettings(steps=5, budget_conditioned=True))
    >>> score = lambda schedule, archs: 1.0 / schedule.num_steps  # more steps: better
    >>> [out] = route_joint(fit.agents[1.0], bench.mixture, [0.5], score, JointSettings(max_steps=20),
    ...                     base_trajectory_macs=fit.ref_macs, budget_range=fit.budget_range)
    >>> out.best.macs <= 0.5 * fit.ref_macs, out.evaluations <= 24
    (True, True)
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
from experts.mixture_space import MixtureSpace
from experts.schedule import StepSchedule
from router.agent import ExpertRoutingAgent
from router.feasibility import logit_scorer, make_feasible
from router.schedules import (
    JointSettings,
    candidate_counts,
    candidate_schedules,
    interval_step_counts,
    neighbour_schedules,
)
from search_spaces import Arch
from search_spaces.errors import UserError

__all__ = [
    "CandidateScore",
    "JointCandidate",
    "JointOutcome",
    "JointSettings",
    "Scorer",
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


#: ``scorer(schedule, archs) -> CandidateScore | float``: one exact evaluation of a candidate;
#: an arch ``None`` means the base model serves that interval.
Scorer = Callable[[StepSchedule, Sequence["Arch | None"]], "CandidateScore | float"]


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
        base_intervals: intervals served by the base model instead of their (full-arch) expert.
    """

    schedule: StepSchedule
    arch: Arch
    macs: int
    agent_budget_ratio: float
    repaired: bool
    score: CandidateScore
    cached: bool = False
    base_intervals: tuple[int, ...] = ()

    def record(self, base_macs: float) -> dict[str, Any]:
        """Compact JSON-ready record (for an allocation's ``info``)."""
        out = {"steps_per_interval": list(self.schedule.steps_per_interval),
               "spacings": [p.spacing for p in self.schedule.parts], "macs_ratio": self.macs / base_macs,
               "agent_budget_ratio": self.agent_budget_ratio, "repaired": self.repaired,
               "value": self.score.value}
        if self.base_intervals:
            out["base_intervals"] = list(self.base_intervals)
        return out


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


def _as_score(value: CandidateScore | float) -> CandidateScore:
    if isinstance(value, CandidateScore):
        return value
    return CandidateScore(float(value))


def smallest_trajectory_macs(mixture: MixtureSpace, allowed_counts: Sequence[Sequence[int]]) -> float:
    """The cheapest trajectory of the joint space: each interval's fewest allowed steps, every
    expert at its smallest arch (a budget below it has no allocation)."""
    return float(sum(min(a) * p.macs(p.smallest()) for a, p in zip(allowed_counts, mixture.parts)))


def _candidate_key(schedule: StepSchedule, arch: Arch, base_intervals: tuple[int, ...] = ()) -> tuple[Any, ...]:
    """What a candidate samples with: its timesteps (they fix the steps per interval), archs and
    the intervals the base model serves."""
    return (tuple(schedule.timesteps()), arch, tuple(base_intervals))


def _sort_value(c: JointCandidate) -> float:
    v = float(c.score.value)
    return math.inf if math.isnan(v) else v


def _tightest_decode(space: Any, agent: ExpertRoutingAgent, budget_macs: float, budget_range: Sequence[float],
                     grid: int, iterations: int) -> tuple[float, Arch, int]:
    """The agent's decode with the most MACs within ``budget_macs``: a log-spaced grid of
    ``grid`` inputs over ``budget_range`` (robust to a decode whose MACs are not monotone in the
    input), then bisection between the best fitting input and the next grid input up.

    Returns ``(input, arch, decodes)``; the smallest input's decode when none fits (the caller
    repairs it).
    """
    lo, hi = math.log(budget_range[0]), math.log(budget_range[1])
    xs = [math.exp(lo + (hi - lo) * i / max(grid - 1, 1)) for i in range(max(grid, 1))]
    decoded = [(x, agent.decode(x)) for x in xs]
    fits = [(float(space.macs(a)), i) for i, (x, a) in enumerate(decoded) if space.macs(a) <= budget_macs + 1e-9]
    if not fits:
        return xs[0], decoded[0][1], len(xs)
    best_m, i = max(fits, key=lambda f: (f[0], -f[1]))
    best = (decoded[i][0], decoded[i][1])
    n = len(xs)
    if i + 1 < len(xs):
        a, b = math.log(xs[i]), math.log(xs[i + 1])
        for _ in range(iterations):
            mid = 0.5 * (a + b)
            arch = agent.decode(math.exp(mid))
            n += 1
            m = float(space.macs(arch))
            if m <= budget_macs + 1e-9:
                a = mid
                if m > best_m:
                    best_m, best = m, (math.exp(mid), arch)
            else:
                b = mid
    return best[0], best[1], n


@dataclass(frozen=True)
class _Decoder:
    """Decodes the agent's expert widths for one step schedule (see the module docstring)."""

    agent: ExpertRoutingAgent
    mixture: MixtureSpace
    budget_range: tuple[float, float]
    grid: int
    iterations: int

    def __call__(self, schedule: StepSchedule, budget_macs: float) -> tuple[Arch, int, float, bool, int]:
        """``(mixture arch, trajectory MACs, agent input budget, repaired, decodes)``."""
        space = MixtureSpace(self.mixture.parts, schedule.steps_per_interval, self.mixture.intervals).space
        full = space.full()
        full_macs = space.macs(full)
        if full_macs <= budget_macs + 1e-9:  # every expert at full width fits: nothing to decode
            return full, full_macs, 1.0, False, 0
        p, arch, decodes = _tightest_decode(space, self.agent, budget_macs, self.budget_range, self.grid,
                                            self.iterations)
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
    decoder = _Decoder(agent, mixture, (lo, hi), int(settings.decode_grid), int(settings.calibrate_iterations))
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
        refine = _Refine(int(settings.refine_evaluations), allowed, settings.ordered_spacings())
        outcomes.append(_route_budget(float(b), schedules, considered, decoder, scorer, budget_macs, cache,
                                      settings.base_choice, refine))
        o = outcomes[-1]
        log.info("joint router budget %g: %d schedules scored (%d new evaluations, %.1f s) of %d that fit; best "
                 "steps %s (%s) at MACs ratio %.4f, proxy %.4g", b, len(o.candidates), o.evaluations,
                 o.proxy_seconds, considered, list(o.best.schedule.steps_per_interval),
                 ",".join(p.spacing for p in o.best.schedule.parts), o.best.macs / base_trajectory_macs,
                 o.best.score.value)
    return outcomes


@dataclass(frozen=True)
class _Refine:
    """The bounded local search after the candidates (``JointSettings.refine_evaluations``)."""

    evaluations: int
    allowed: Sequence[Sequence[int]]
    spacings: Sequence[str]


def _route_budget(b: float, schedules: Sequence[StepSchedule], considered: int, decoder: _Decoder,
                  scorer: Scorer, budget_macs: float, cache: dict[tuple[Any, ...], CandidateScore],
                  base_choice: bool = False, refine: _Refine | None = None) -> JointOutcome:
    """Decode and score each schedule of one budget (and, with ``base_choice``, its variant with
    the base model serving the full-arch intervals), then refine from the best (bounded); the
    best (first on ties) wins."""
    cost = {"decode_s": 0.0, "proxy_s": 0.0, "decodes": 0, "evaluations": 0}
    candidates: list[JointCandidate] = []
    for schedule in schedules:
        candidates += _score_schedule(schedule, decoder, scorer, budget_macs, cache, base_choice, cost)
    if refine is not None and refine.evaluations > 0:
        candidates += _refine(candidates, decoder, scorer, budget_macs, cache, base_choice, cost, refine)
    best = min(candidates, key=_sort_value)
    return JointOutcome(b, best, tuple(candidates), considered, int(cost["decodes"]), int(cost["evaluations"]),
                        cost["decode_s"], cost["proxy_s"])


def _score_schedule(schedule: StepSchedule, decoder: _Decoder, scorer: Scorer, budget_macs: float,
                    cache: dict[tuple[Any, ...], CandidateScore], base_choice: bool,
                    cost: dict[str, Any], only_if_fits: bool = False) -> list[JointCandidate]:
    """The candidates of one schedule (its decode, and the base-served variant), scored once each
    (none when ``only_if_fits`` and the decode stays over the budget); ``cost`` accumulates
    decodes, evaluations and seconds."""
    t0 = time.perf_counter()
    arch, macs, p, repaired, n = decoder(schedule, budget_macs)
    cost["decode_s"] += time.perf_counter() - t0
    cost["decodes"] += n
    if only_if_fits and macs > budget_macs + 1e-9:
        return []
    archs = decoder.mixture.split(arch)
    variants: list[tuple[int, ...]] = [()]
    if base_choice:
        full = tuple(k for k, (part, a) in enumerate(zip(decoder.mixture.parts, archs)) if a == part.full())
        if full:
            variants.append(full)
    out = []
    for on_base in variants:
        key = _candidate_key(schedule, arch, on_base)
        cached = key in cache
        if not cached:
            t1 = time.perf_counter()
            served = [None if k in on_base else a for k, a in enumerate(archs)]
            cache[key] = _as_score(scorer(schedule, served))
            cost["proxy_s"] += time.perf_counter() - t1
            cost["evaluations"] += 1
        out.append(JointCandidate(schedule, arch, int(macs), float(p), repaired, cache[key], cached, on_base))
    return out


def _refine(candidates: Sequence[JointCandidate], decoder: _Decoder, scorer: Scorer, budget_macs: float,
            cache: dict[tuple[Any, ...], CandidateScore], base_choice: bool, cost: dict[str, Any],
            refine: _Refine) -> list[JointCandidate]:
    """First-improvement local search over the one-move neighbour schedules of the best candidate
    (:func:`router.schedules.neighbour_schedules`): the first neighbour that scores better becomes
    the centre; it ends when none does, within the budget and at most ``refine.evaluations`` new
    exact evaluations (first-improvement walks further than best-improvement on so few). Returns
    the candidates it scored."""
    out: list[JointCandidate] = []
    seen = {tuple(c.schedule.timesteps()) for c in candidates}
    limit = int(cost["evaluations"]) + refine.evaluations
    centre = min(candidates, key=_sort_value)
    for _ in range(refine.evaluations + 1):  # bounded: a pass that moves has scored a new schedule
        moved = False
        for schedule in neighbour_schedules(centre.schedule, refine.allowed, refine.spacings):
            ts = tuple(schedule.timesteps())
            if ts in seen:
                continue
            if cost["evaluations"] >= limit:
                return out
            seen.add(ts)
            scored = _score_schedule(schedule, decoder, scorer, budget_macs, cache, base_choice, cost,
                                     only_if_fits=True)
            out += scored
            better = min(scored, key=_sort_value, default=None)
            if better is not None and _sort_value(better) < _sort_value(centre):
                centre, moved = better, True
                break
        if not moved:
            break
    return out


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
        "schedules_scored": len({tuple(c.schedule.timesteps()) for c in outcome.candidates}),
        "candidates_scored": len(outcome.candidates),
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
    return dataclasses.replace(alloc, schedule=sched, base_intervals=best.base_intervals)
