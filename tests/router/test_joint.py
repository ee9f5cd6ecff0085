"""Joint step-and-expert routing: bounded candidate schedules, the agent's decode per schedule,
one scorer call per candidate, and the allocation with its schedule."""

from __future__ import annotations

import math

import pytest

from experts.allocation import Allocation
from experts.intervals import Intervals
from router.joint import CandidateScore, joint_allocation, route_joint
from router.schedules import JointSettings, candidate_counts, candidate_schedules, interval_step_counts
from router.settings import RouterSettings
from router.synthetic import SyntheticMixture
from router.train import fit_agents, train_router
from search_spaces.errors import UserError


@pytest.fixture(scope="module")
def bench() -> SyntheticMixture:
    return SyntheticMixture.default(seed=0, num_experts=3, num_blocks=3, num_skips=1)


@pytest.fixture(scope="module")
def fitted(bench):
    min_ratio = bench.space.macs(bench.space.smallest()) / bench.base_macs
    settings = RouterSettings(steps=60, seed=0, budget_conditioned=True, budget_range=(min_ratio, 1.0))
    return fit_agents(bench.space, bench.task_loss, [0.3, 0.6], settings)


class _Scorer:
    """Width loss at the schedule's step weights plus a discretisation error that falls with the
    steps of each interval (quadratic spacing slightly better): counts its calls."""

    def __init__(self, bench: SyntheticMixture) -> None:
        self.bench, self.calls = bench, 0

    def __call__(self, schedule, archs):
        self.calls += 1
        width = self.bench.loss(self.bench.mixture.join(archs))
        disc = sum(2.0 / (1 + c) for c in schedule.steps_per_interval)
        disc *= 0.95 if schedule.parts[0].spacing == "quadratic" else 1.0
        return CandidateScore(width + disc, {"disc": disc})


def test_interval_step_counts_clip_by_span_and_keep_a_step_at_t0():
    iv = Intervals(1000, (3, 600))
    assert interval_step_counts(iv, 5) == [(1, 2, 3), (0, 1, 2, 3, 4, 5), (0, 1, 2, 3, 4, 5)]
    assert interval_step_counts(iv, 5, counts=(0, 2, 4)) == [(2,), (0, 2, 4), (0, 2, 4)]
    with pytest.raises(UserError, match="interval 0"):
        interval_step_counts(iv, 5, counts=(0, 4))


def test_candidate_counts_start_from_the_proportional_split_and_stay_bounded():
    iv = Intervals(1000, (500,))
    allowed = interval_step_counts(iv, 6)
    by_total = candidate_counts(iv, allowed, 6)
    assert sorted(by_total) == [1, 2, 3, 4, 5, 6]
    assert by_total[4][0] == (2, 2) and by_total[6][0] == (3, 3)
    for n, vs in by_total.items():
        assert all(sum(v) == n and v[0] >= 1 for v in vs)
        assert len(vs) <= 1 + 2 * 1 * 2 and len(set(vs)) == len(vs)


def test_candidate_schedules_fit_at_the_smallest_experts_are_capped_and_deterministic(bench):
    mix = bench.mixture
    settings = JointSettings(max_steps=40, max_schedules=10)
    by_total = candidate_counts(mix.intervals, interval_step_counts(mix.intervals, 40), 40)
    full = [p.macs(p.full()) for p in mix.parts]
    small = [p.macs(p.smallest()) for p in mix.parts]
    budget = 0.3 * bench.base_macs
    scheds, considered = candidate_schedules(mix.intervals, by_total, settings, budget, full, small)
    again, _ = candidate_schedules(mix.intervals, by_total, settings, budget, full, small)
    assert scheds == again and len(scheds) == 10 and considered > 10
    n_spacings = len(settings.spacings)
    totals = sorted({s.num_steps for s in scheds}, reverse=True)
    assert len(totals) == 10 // n_spacings  # as many totals as every spacing can be tried for
    # each kept total's proportional counts in every spacing before any neighbour of them
    first = scheds[: len(totals) * n_spacings]
    for n in totals:
        at_n = [s for s in first if s.num_steps == n]
        assert len({s.steps_per_interval for s in at_n}) == 1
        assert sorted(s.parts[0].spacing for s in at_n) == sorted(settings.spacings)
    for s in scheds:
        assert s.trajectory_macs(small) <= budget
    # at most one total that fits at full width: the largest (fewer steps there are dominated)
    assert len({s.num_steps for s in scheds if s.trajectory_macs(full) <= budget}) <= 1
    assert scheds[0].parts[0].spacing == "leading"
    assert len({tuple(s.timesteps()) for s in scheds}) == len(scheds)  # no two sample alike


def test_route_joint_keeps_the_best_candidate_within_budget_and_reports_its_cost(bench, fitted):
    scorer = _Scorer(bench)
    settings = JointSettings(max_steps=40, max_schedules=8, calibrate_iterations=12)
    outcomes = route_joint(fitted.agents[0.3], bench.mixture, [0.3, 0.6], scorer, settings,
                           base_trajectory_macs=fitted.ref_macs, budget_range=fitted.budget_range)
    assert [o.budget_ratio for o in outcomes] == [0.3, 0.6]
    assert scorer.calls == sum(o.evaluations for o in outcomes)
    for o in outcomes:
        assert 1 <= o.evaluations <= len(o.candidates) <= 8
        assert all(c.macs <= o.budget_ratio * fitted.ref_macs + 1e-6 for c in o.candidates)
        assert o.best.score.value == min(c.score.value for c in o.candidates)
        assert o.decodes > 0 and o.proxy_seconds >= 0
        a = joint_allocation(o, bench.mixture, base_trajectory_macs=fitted.ref_macs, train_seconds=fitted.train_seconds,
                             train_evaluations=fitted.evaluations, info={"config_key": "k"})
        assert a.feasible and a.schedule == o.best.schedule
        assert a.steps_per_expert == o.best.schedule.steps_per_interval
        assert a.info["proxy_evaluations"] == o.evaluations and a.info["config_key"] == "k"
        assert a.info["cost"]["evaluations"] == fitted.evaluations + o.evaluations
        assert Allocation.from_json(a.to_json()) == a
        # the base with fewer steps (every expert full, the most steps that fit) is a candidate
        full = [c for c in o.candidates if c.arch == bench.space.full()]
        assert len(full) >= 1 and full[0].schedule.parts[0].spacing == "leading"
        assert full[0].macs <= o.budget_ratio * fitted.ref_macs


def test_route_joint_scores_a_repeated_candidate_once_and_picks_the_first_of_ties(bench, fitted):
    calls = []

    def flat(schedule, archs):
        calls.append(schedule)
        return 1.0

    settings = JointSettings(max_steps=40, max_schedules=4)
    out = route_joint(fitted.agents[0.3], bench.mixture, [0.3, 0.3], flat, settings,
                      base_trajectory_macs=fitted.ref_macs, budget_range=fitted.budget_range)
    assert out[1].evaluations == 0 and all(c.cached for c in out[1].candidates)
    assert len(calls) == out[0].evaluations
    assert out[0].best is out[0].candidates[0]


def test_joint_settings_reject_bad_values():
    with pytest.raises(UserError, match="max_schedules"):
        JointSettings(max_steps=4, max_schedules=0)
    with pytest.raises(UserError, match="spacing"):
        JointSettings(max_steps=4, spacings=())
    assert JointSettings(max_steps=4, spacings=("uniform", "leading")).ordered_spacings() == ("leading", "uniform")


def test_route_joint_rejects_a_budget_no_schedule_fits(bench, fitted):
    with pytest.raises(UserError, match="no step schedule"):
        route_joint(fitted.agents[0.3], bench.mixture, [1e-4], lambda s, a: 0.0, JointSettings(max_steps=40),
                    base_trajectory_macs=fitted.ref_macs, budget_range=fitted.budget_range)


def test_fit_agents_then_export_is_train_router(bench):
    """The training half is the same computation: train_router on the same settings decodes the
    same archs."""
    s = RouterSettings(steps=30, seed=1, budget_conditioned=True)
    res = train_router(bench.space, bench.task_loss, [0.4, 0.7], s)
    fit = fit_agents(bench.space, bench.task_loss, [0.4, 0.7], s)
    assert [fit.agents[b].decode(b) for b in (0.4, 0.7)] == [res.agents[0].decode(b) for b in (0.4, 0.7)]
    assert math.isclose(fit.ref_macs, res.base_macs) and fit.evaluations == res.train_evaluations
    assert fit.record == res.settings


class _MixedScorer(_Scorer):
    """As :class:`_Scorer`, but the best placement gives the highest-noise interval one step more
    than its share and a ``trailing`` spacing there only: a schedule none of the shared-spacing
    candidates is."""

    def __call__(self, schedule, archs):
        base = super().__call__(schedule, archs)
        counts = schedule.steps_per_interval
        bonus = 1.0 if schedule.parts[-1].spacing == "trailing" and schedule.parts[0].spacing != "trailing" else 0.0
        bonus += 0.5 if counts[-1] > counts[0] else 0.0
        return CandidateScore(base.value - bonus, base.details)


def test_refine_walks_one_move_neighbours_within_its_evaluations_and_the_budget(bench, fitted):
    plain, refined = _MixedScorer(bench), _MixedScorer(bench)
    kw = dict(base_trajectory_macs=fitted.ref_macs, budget_range=fitted.budget_range)
    [a] = route_joint(fitted.agents[0.3], bench.mixture, [0.3], plain, JointSettings(max_steps=40, max_schedules=8),
                      **kw)
    [b] = route_joint(fitted.agents[0.3], bench.mixture, [0.3], refined,
                      JointSettings(max_steps=40, max_schedules=8, refine_evaluations=12), **kw)
    assert a.candidates == b.candidates[: len(a.candidates)]  # the same candidates first
    assert a.evaluations < b.evaluations <= a.evaluations + 12 and refined.calls == b.evaluations
    assert b.best.score.value < a.best.score.value  # it found a better, mixed-spacing schedule
    spacings = {p.spacing for p in b.best.schedule.parts}
    assert len(spacings) > 1 and b.best.schedule.parts[-1].spacing == "trailing"
    assert all(c.macs <= 0.3 * fitted.ref_macs + 1e-6 for c in b.candidates)
    with pytest.raises(UserError, match="refine_evaluations"):
        JointSettings(max_steps=4, refine_evaluations=-1)
