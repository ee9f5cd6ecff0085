"""Step schedules and the steps x expert search space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from experts.intervals import Intervals
from experts.schedule import SPACINGS, IntervalSteps, StepSchedule, place_steps, uniform_timesteps
from experts.steps_space import IntervalSpace, StepsSpace, joint_space, split_joint
from nas.sampling import make_scheduler, sampling_timesteps
from search_spaces import Dimension, ElasticUNet, SimpleSpace
from search_spaces.testing import SearchSpaceContract
from tests.conftest import build_tiny_unet

IV3 = Intervals(1000, (300, 700))


# ----------------------------------------------------------------- placement
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n,lo,hi", [(1, 0, 300), (3, 0, 300), (4, 300, 700), (7, 700, 1000), (10, 5, 15)])
def test_placement_is_distinct_ascending_and_inside(spacing, n, lo, hi):
    t = place_steps(n, lo, hi, spacing)
    assert len(t) == n and t == sorted(set(t))
    assert lo <= t[0] and t[-1] < hi


def test_placements_follow_their_definitions():
    assert place_steps(3, 0, 300, "leading") == [0, 100, 200]
    assert place_steps(3, 0, 300, "trailing") == [99, 199, 299]
    assert place_steps(3, 0, 300, "uniform") == [50, 150, 250]
    quad = place_steps(4, 0, 1000, "quadratic")
    assert quad[-1] == 999 and np.all(np.diff(quad)[:-1] < np.diff(quad)[1:])  # denser at low noise


def test_too_many_steps_for_an_interval_is_refused():
    with pytest.raises(ValueError, match="11 steps do not fit"):
        place_steps(11, 5, 15, "leading")


# ----------------------------------------------------------------- schedules
def test_timesteps_are_strictly_descending_and_routed_to_their_interval():
    s = StepSchedule.from_counts(IV3, (2, 3, 4), ("quadratic", "uniform", "trailing"))
    ts = s.timesteps()
    assert ts == sorted(ts, reverse=True) and len(set(ts)) == len(ts) == 9
    assert IV3.steps_per_interval(ts) == [2, 3, 4] == list(s.steps_per_interval)
    assert s.num_steps == 9


def test_zero_steps_allowed_above_the_lowest_interval():
    s = StepSchedule.from_counts(IV3, (2, 0, 0))
    assert s.timesteps() == [150, 0]


def test_zero_steps_in_the_lowest_interval_is_refused():
    with pytest.raises(ValueError, match=r"interval 0 \[0, 300\) has 0 steps.*at least one step"):
        StepSchedule.from_counts(IV3, (0, 4, 4))
    with pytest.raises(ValueError, match=r"interval 0 \[0, 300\) has 0 steps"):
        StepSchedule.from_timesteps(IV3, [999, 500], end_in_lowest=True)
    with pytest.raises(ValueError, match="at least one step in total"):
        StepSchedule(IV3, (IntervalSteps(0),) * 3, end_in_lowest=False)


def test_a_samplers_own_list_may_end_above_the_lowest_interval():
    # DDIM trailing, 3 steps: 999, 666, 332; the last step jumps from 332 to the clean sample
    s = StepSchedule.from_timesteps(IV3, [999, 666, 332])
    assert not s.end_in_lowest and s.steps_per_interval == (0, 2, 1)
    assert StepSchedule.from_json(s.to_json()) == s


@pytest.mark.parametrize("parts,msg", [
    ((IntervalSteps(1), IntervalSteps(1)), "one entry per interval"),
    ((IntervalSteps(1), IntervalSteps(401), IntervalSteps(1)), r"interval 1 \[300, 700\): 401 steps do not fit"),
    ((IntervalSteps(1), IntervalSteps.explicit([100]), IntervalSteps(1)),
     r"interval 1 \[300, 700\): explicit timestep 100 is outside"),
])
def test_invalid_schedules_name_the_interval_and_rule(parts, msg):
    with pytest.raises(ValueError, match=msg):
        StepSchedule(IV3, parts)


def test_interval_steps_validate_their_fields():
    with pytest.raises(ValueError, match="unknown spacing 'cosine'"):
        IntervalSteps(2, "cosine")
    with pytest.raises(ValueError, match="repeat"):
        IntervalSteps.explicit([5, 5])
    with pytest.raises(ValueError, match=">= 0"):
        IntervalSteps(-1)


def test_json_round_trip_and_file(tmp_path):
    s = StepSchedule(IV3, (IntervalSteps(2, "quadratic"), IntervalSteps(0),
                           IntervalSteps.explicit([990, 701, 850])))
    assert StepSchedule.from_json(s.to_json()) == s
    assert s.timesteps() == [990, 850, 701, 299, 74]
    s.save(tmp_path / "schedule.json")
    assert StepSchedule.load(tmp_path / "schedule.json") == s
    with pytest.raises(ValueError, match="missing key 'parts'"):
        StepSchedule.from_dict({"intervals": IV3.to_dict()})


CONFIGS = {
    "ddpm-default": dict(DDPMScheduler().config),
    "cosine": dict(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config),
    "trailing": dict(DDPMScheduler(timestep_spacing="trailing").config),
    "linspace": dict(DDPMScheduler(timestep_spacing="linspace").config),
    "offset": dict(DDPMScheduler(steps_offset=1).config),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("n", [1, 3, 4, 7, 10, 50])
def test_from_uniform_equals_todays_ddim_timesteps(name, n):
    cfg = CONFIGS[name]
    want = sampling_timesteps(make_scheduler("ddim", cfg), n)
    assert StepSchedule.from_uniform(IV3, n, scheduler_config=cfg).timesteps() == want
    spacing, offset = cfg["timestep_spacing"], cfg["steps_offset"]
    assert uniform_timesteps(n, 1000, timestep_spacing=spacing, steps_offset=offset) == want


def test_per_interval_leading_reproduces_uniform_on_a_grid_aligned_split():
    counts = IV3.steps_per_interval(uniform_timesteps(10, 1000))
    assert StepSchedule.from_counts(IV3, counts, "leading").timesteps() == uniform_timesteps(10, 1000)


def test_trajectory_macs_weights_each_interval_by_its_steps():
    s = StepSchedule.from_counts(IV3, (3, 0, 2))
    assert s.trajectory_macs([10, 100, 1000]) == 3 * 10 + 2 * 1000


# ----------------------------------------------------------------- spaces
def test_steps_space_rules():
    with pytest.raises(ValueError, match=r"holds t=0.*must not include 0"):
        StepsSpace.for_interval(IV3, 0, (0, 1, 2))
    StepsSpace.for_interval(IV3, 1, (0, 1, 2))  # above the lowest interval 0 is fine
    with pytest.raises(ValueError, match="do not fit"):
        StepsSpace.for_interval(IV3, 2, (1, 301))
    with pytest.raises(ValueError, match="strictly increasing"):
        StepsSpace((2, 1))
    with pytest.raises(ValueError, match="unknown spacing"):
        StepsSpace((1, 2), ("leading", "cosine"))
    with pytest.raises(ValueError, match=r"interval 0: interval \[0, 300\) holds t=0"):
        joint_space(IV3, [SimpleSpace([Dimension("w", (1,))], lambda a: 1)] * 3, [(0, 1), (1,), (1,)])


class TestStepsSpaceContract(SearchSpaceContract):
    @pytest.fixture
    def space(self):
        return StepsSpace.for_interval(IV3, 1, (0, 1, 2, 4))


@pytest.fixture(scope="module")
def unet_space():
    return ElasticUNet(build_tiny_unet(), importance="none").space


class TestIntervalSpaceContract(SearchSpaceContract):
    @pytest.fixture
    def space(self, unet_space):
        return IntervalSpace(StepsSpace.for_interval(IV3, 2, (0, 2, 3)), unet_space)


def test_joint_macs_is_sum_of_steps_times_expert_macs(unet_space):
    space = joint_space(IV3, [unet_space] * 3, [(1, 2, 3), (0, 2, 4), (0, 1, 3)])
    rng = np.random.default_rng(0)
    for _ in range(10):
        arch = space.sample(rng)
        space.validate(arch)
        schedule, archs = split_joint(space, arch, IV3)
        want = sum(s * unet_space.macs(a) for s, a in zip(schedule.steps_per_interval, archs))
        assert space.macs(arch) == want == schedule.trajectory_macs([unet_space.macs(a) for a in archs])
    full = space.full()
    assert space.macs(full) == (3 + 4 + 3) * unet_space.macs(unet_space.full())
    schedule, _ = split_joint(space, full, IV3)
    assert schedule == StepSchedule.from_counts(IV3, (3, 4, 3), "leading")


def test_the_uniform_schedule_and_the_base_are_a_point_of_the_joint_space(unet_space):
    counts = IV3.steps_per_interval(uniform_timesteps(10, 1000))  # [3, 4, 3]
    space = joint_space(IV3, [unet_space] * 3, [(1, c) for c in counts])
    schedule, archs = split_joint(space, space.full(), IV3)
    assert schedule.timesteps() == uniform_timesteps(10, 1000)
    assert all(a == unet_space.full() for a in archs)


def _one_hot(n: int, i: int) -> torch.Tensor:
    w = torch.zeros(n, dtype=torch.float64)
    w[i] = 1.0
    return w


def test_relaxed_macs_exact_at_one_hot_and_differentiable(unet_space):
    space = joint_space(IV3, [unet_space] * 3, [(1, 2, 3), (0, 2, 4), (0, 1, 3)])
    rng = np.random.default_rng(3)
    for _ in range(5):
        arch = space.sample(rng)
        weights = {d.name: _one_hot(len(d.choices), d.index(arch[d.name])) for d in space.free_dimensions()}
        assert float(space.macs_relaxed(weights)) == pytest.approx(space.macs(arch), rel=1e-9)
    logits = {d.name: torch.zeros(len(d.choices), dtype=torch.float64, requires_grad=True)
              for d in space.free_dimensions()}
    total = space.macs_relaxed({k: v.softmax(0) for k, v in logits.items()})
    total.backward()
    assert logits["e1/steps/count"].grad.abs().sum() > 0  # the steps dimension gets a gradient
    spacing_grad = logits["e1/steps/spacing"].grad
    assert spacing_grad is None or float(spacing_grad.abs().sum()) == 0  # placement costs nothing
    # expected steps x expected expert MACs: with uniform probabilities over (0, 2, 4), E[count] = 2
    iv1 = space.parts["e1"]
    probs = {k.partition("/")[2]: v.softmax(0).detach() for k, v in logits.items() if k.startswith("e1/")}
    expected = 2.0 * float(iv1.expert_space.macs_relaxed(iv1.split_values(probs)["expert"]))
    assert float(iv1.macs_relaxed(probs)) == pytest.approx(expected)
