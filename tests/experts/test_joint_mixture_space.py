"""MixtureSpace.joint / steps_only: steps and expert archs in one space, arch <-> Allocation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experts import Allocation, MixtureSpace
from experts.intervals import Intervals
from experts.schedule import IntervalSteps, StepSchedule, uniform_timesteps
from experts.steps_space import JointSpace, PinnedSpace, interval_counts
from search_spaces import Dimension, ElasticUNet, SimpleSpace
from search_spaces.testing import SearchSpaceContract
from tests.conftest import build_tiny_unet

IV3 = Intervals(1000, (300, 700))


@pytest.fixture(scope="module")
def unet_space():
    return ElasticUNet(build_tiny_unet(), importance="none").space


@pytest.fixture(scope="module")
def joint(unet_space) -> MixtureSpace:
    return MixtureSpace.joint(IV3, [unet_space] * 3, max_steps=6, spacings=("uniform", "quadratic", "leading"))


class TestJointSpaceContract(SearchSpaceContract):
    @pytest.fixture
    def space(self, unet_space):
        return MixtureSpace.joint(IV3, [unet_space] * 3, counts=(0, 1, 3), max_steps=5).space


def test_interval_counts_clip_to_span_and_lowest_interval():
    iv = Intervals(1000, (2, 500))
    assert interval_counts(iv, max_steps=4) == [(1, 2), (0, 1, 2, 3, 4), (0, 1, 2, 3, 4)]
    assert interval_counts(iv, counts=(0, 2, 8), max_steps=4) == [(2,), (0, 2), (0, 2)]
    assert interval_counts(iv, counts=[(1,), (0, 5), (3,)]) == [(1,), (0, 5), (3,)]
    with pytest.raises(ValueError, match="interval 0 .*no allowed step count"):
        interval_counts(iv, counts=(0, 3))
    with pytest.raises(ValueError, match="counts or max_steps"):
        interval_counts(iv)


def test_joint_is_flagged_and_full_arch_is_most_steps_full_experts(joint, unet_space):
    assert joint.is_joint and isinstance(joint.space, JointSpace) and joint.steps_per_expert is None
    full = joint.space.full()
    assert joint.split(full) == [unet_space.full()] * 3
    sched = joint.schedule(full)
    # the most steps the rule allows (6 in all), every interval at the last spacing
    assert sched.steps_per_interval == (2, 2, 2) and {p.spacing for p in sched.parts} == {"leading"}
    assert joint.full_trajectory_macs() == 6 * unet_space.macs(unet_space.full())
    plain = MixtureSpace([unet_space] * 3, [3, 4, 3], IV3)
    assert not plain.is_joint and plain.schedule(plain.space.full()) is None


def test_trajectory_macs_equal_the_allocations_and_the_round_trip(joint, unet_space, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(15):
        arch = joint.space.sample(rng)
        sched = joint.schedule(arch)
        archs = joint.split(arch)
        want = sum(s * unet_space.macs(a) for s, a in zip(sched.steps_per_interval, archs))
        alloc = joint.to_allocation(arch, method="search", budget_ratio=1.0,
                                    base_trajectory_macs=joint.full_trajectory_macs())
        assert joint.space.macs(arch) == alloc.trajectory_macs == want == sched.trajectory_macs(alloc.macs_per_expert)
        assert alloc.schedule == sched and alloc.steps_per_expert == sched.steps_per_interval
        assert alloc.macs_per_expert == tuple(unet_space.macs(a) for a in archs) == joint.macs_per_call(arch)
        alloc.save(tmp_path / f"{i}.json")
        assert joint.from_allocation(Allocation.load(tmp_path / f"{i}.json")) == arch
        assert joint.join(archs, sched) == arch
        assert sched.num_steps <= 6


def test_max_steps_is_a_rule_that_repair_restores(joint):
    arch = joint.space.complete({})  # every dimension at its last choice: 18 steps
    with pytest.raises(ValueError, match="at most 6"):
        joint.space.validate(arch)
    fixed = joint.space.repair(arch)
    joint.space.validate(fixed)
    assert joint.schedule(fixed).num_steps == 6
    rng = np.random.default_rng(1)
    for _ in range(20):
        assert joint.schedule(joint.space.sample(rng)).num_steps <= 6


def test_relaxed_macs_are_exact_at_one_hot_and_differentiable(joint):
    rng = np.random.default_rng(3)
    arch = joint.space.sample(rng)
    w = {}
    for d in joint.space.free_dimensions():
        v = torch.zeros(len(d.choices), dtype=torch.float64)
        v[d.index(arch[d.name])] = 1
        w[d.name] = v
    assert float(joint.space.macs_relaxed(w)) == pytest.approx(joint.space.macs(arch), rel=1e-9)
    logits = {d.name: torch.zeros(len(d.choices), dtype=torch.float64, requires_grad=True)
              for d in joint.space.free_dimensions()}
    joint.space.macs_relaxed({k: v.softmax(0) for k, v in logits.items()}).backward()
    assert all(float(logits[f"e{k}/steps/count"].grad.abs().sum()) > 0 for k in range(3))
    per = joint.split_values(logits)
    assert set(per[0]) >= {"steps/count", "steps/spacing"} and any(k.startswith("expert/") for k in per[0])


def test_explicit_schedules_join_by_matching_a_spacing(unet_space):
    joint = MixtureSpace.joint(IV3, [unet_space] * 3, max_steps=10, spacings=("uniform", "quadratic", "leading"))
    counts = IV3.steps_per_interval(uniform_timesteps(10, 1000))
    uniform = StepSchedule.from_uniform(IV3, 10)  # explicit timesteps, DDIM's own (on the 100-grid of IV3)
    archs = [unet_space.full()] * 3
    arch = joint.join(archs, uniform)
    assert joint.schedule(arch).timesteps() == uniform_timesteps(10, 1000)
    assert joint.schedule(arch).steps_per_interval == tuple(counts)
    odd = StepSchedule(IV3, (IntervalSteps.explicit([1, 2]), IntervalSteps(0), IntervalSteps(1)))
    with pytest.raises(ValueError, match="interval 0: timesteps .* not placed by any spacing"):
        joint.join(archs, odd)
    with pytest.raises(ValueError, match="needs the step schedule"):
        joint.join(archs)
    alloc = Allocation("uniform", 1.0, IV3, tuple(archs), (1, 1, 1), tuple(counts), 10)
    with pytest.raises(ValueError, match="no step schedule"):
        joint.from_allocation(alloc)
    assert joint.from_allocation(alloc, schedule=uniform) == arch


def test_from_product_keeps_the_joint_space(joint):
    again = MixtureSpace.from_product(joint.space, IV3)
    assert again.is_joint and again.space is joint.space and again.parts == joint.parts


def test_steps_only_pins_every_expert_at_the_base(unet_space):
    base_macs = unet_space.macs(unet_space.full())
    mix = MixtureSpace.steps_only(IV3, unet_space, max_steps=10)
    assert all(isinstance(p, PinnedSpace) for p in mix.parts)
    assert {d.name.split("/")[2] for d in mix.space.free_dimensions() if len(d.choices) > 1} == {"count", "spacing"}
    rng = np.random.default_rng(2)
    arch = mix.space.sample(rng)
    alloc = mix.to_allocation(arch, method="steps", budget_ratio=1.0, base_trajectory_macs=10 * base_macs)
    assert alloc.archs == (unet_space.full(),) * 3
    assert alloc.trajectory_macs == mix.space.macs(arch) == alloc.schedule.num_steps * base_macs
    assert mix.from_allocation(alloc) == arch
    by_macs = MixtureSpace.steps_only(IV3, 1234, counts=(0, 1, 2))
    a = by_macs.space.full()
    assert by_macs.space.macs(a) == 6 * 1234 and by_macs.to_allocation(
        a, method="steps", budget_ratio=1.0, base_trajectory_macs=6 * 1234).archs == ({},) * 3


def test_a_plain_space_refuses_schedules():
    s = SimpleSpace([Dimension("w", (4, 8))], macs_fn=lambda a: a["w"])
    mix = MixtureSpace([s, s, s], [1, 1, 1], IV3)
    with pytest.raises(ValueError, match="fixed steps"):
        mix.join([{"w": 4}] * 3, StepSchedule.from_counts(IV3, (1, 1, 1)))
    with pytest.raises(ValueError, match="not a joint"):
        mix.steps_spaces
