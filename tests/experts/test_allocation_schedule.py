"""Allocation.schedule: optional, JSON key only when set, validated against the step counts."""

from __future__ import annotations

import json

import pytest

from experts.allocation import Allocation
from experts.intervals import Intervals
from experts.schedule import IntervalSteps, StepSchedule
from search_spaces import Arch

IV = Intervals(1000, (300, 700))
ARCHS = (Arch({"w": 8}), Arch({"w": 16}), Arch({"w": 4}))


def _alloc(steps=(3, 0, 2), schedule=None, **kw) -> Allocation:
    return Allocation("router", 0.5, kw.pop("intervals", IV), ARCHS, (10, 20, 30), steps, 1000,
                      info={"x": 1}, schedule=schedule, **kw)


def _old_format_json(a: Allocation) -> str:
    """The allocation JSON as written before schedules existed (the key set frozen here)."""
    return json.dumps({
        "method": a.method, "budget_ratio": a.budget_ratio, "intervals": a.intervals.to_dict(),
        "archs": [x.to_dict() for x in a.archs], "macs_per_expert": list(a.macs_per_expert),
        "steps_per_expert": list(a.steps_per_expert), "base_trajectory_macs": a.base_trajectory_macs,
        "trajectory_macs": a.trajectory_macs, "achieved_ratio": a.achieved_ratio, "feasible": a.feasible,
        "info": a.info,
    }, indent=2, sort_keys=True)


def test_without_schedule_the_file_is_byte_identical_to_the_old_format(tmp_path):
    a = _alloc(steps=(4, 3, 3))
    assert a.schedule is None and a.timesteps() is None
    assert "schedule" not in a.to_dict()
    a.save(tmp_path / "a.json")
    assert (tmp_path / "a.json").read_text() == _old_format_json(a)
    back = Allocation.load(tmp_path / "a.json")
    assert back == a and back.schedule is None


def test_schedule_round_trips_and_gives_the_timesteps(tmp_path):
    s = StepSchedule(IV, (IntervalSteps(3, "quadratic"), IntervalSteps(0), IntervalSteps.explicit([900, 720])))
    a = _alloc(schedule=s)
    assert a.timesteps() == s.timesteps() and a.timesteps()[:2] == [900, 720]
    assert a.trajectory_macs == s.trajectory_macs(a.macs_per_expert) == 3 * 10 + 2 * 30
    a.save(tmp_path / "a.json")
    back = Allocation.load(tmp_path / "a.json")
    assert back == a and back.schedule == s and back.timesteps() == a.timesteps()
    assert json.loads((tmp_path / "a.json").read_text())["schedule"]["timesteps"] == s.timesteps()


def test_a_schedule_must_match_the_step_counts_and_intervals():
    s = StepSchedule.from_counts(IV, (3, 0, 2))
    with pytest.raises(ValueError, match="steps_per_expert .* differ from its schedule"):
        _alloc(steps=(3, 1, 2), schedule=s)
    other = StepSchedule.from_counts(Intervals(1000, (400, 700)), (3, 0, 2))
    with pytest.raises(ValueError, match="schedule is for intervals"):
        _alloc(schedule=other)
    with pytest.raises(ValueError, match="must be a StepSchedule"):
        _alloc(schedule=[999, 0])


def test_schedules_take_part_in_equality():
    a = _alloc(schedule=StepSchedule.from_counts(IV, (3, 0, 2), "leading"))
    b = _alloc(schedule=StepSchedule.from_counts(IV, (3, 0, 2), "trailing"))
    assert a != b and a != _alloc()
