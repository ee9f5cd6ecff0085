"""The base model as a per-interval choice of the joint space (``schedule.base_choice``): the
space, its allocations, the mixture built from them, fine-tuning and the joint router."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from experts import Allocation, MixtureSpace
from experts.finetune import finetune_allocation
from experts.intervals import Intervals
from experts.mixture import MixtureOfExperts
from experts.pipeline import MixturePipeline
from experts.schedule import StepSchedule
from experts.steps_space import IntervalSpace, ModelSpace, StepsSpace
from experts.train_loop import ExpertTrainSettings
from search_spaces import Dimension, ElasticUNet, SimpleSpace
from search_spaces.testing import SearchSpaceContract
from tests.conftest import build_tiny_unet
from tests.experts.test_finetune import IV, SCHED, experts_dir  # noqa: F401  (fixture)
from tests.experts.test_training import _images

IV3 = Intervals(1000, (300, 700))
W = SimpleSpace([Dimension("w", (4, 8))], macs_fn=lambda a: 10 * a["w"])


@pytest.fixture(scope="module")
def unet_space():
    return ElasticUNet(build_tiny_unet(), importance="none").space


class TestJointSpaceWithBaseContract(SearchSpaceContract):
    @pytest.fixture
    def space(self, unet_space):
        return MixtureSpace.joint(IV3, [unet_space] * 3, counts=(0, 1, 3), max_steps=5, base_choice=True).space


def test_interval_space_base_pins_the_expert_at_full_and_keeps_its_macs():
    iv = IntervalSpace(StepsSpace((1, 2, 3)), W, base_choice=True)
    assert "model/base" in iv.names()
    narrow = iv.join({"steps": {"count": 3, "spacing": 0}, "expert": {"w": 4}, "model": {"base": 1}})
    with pytest.raises(ValueError, match="model/base=1 .*full arch"):
        iv.validate(narrow)
    fixed = iv.repair(narrow)
    iv.validate(fixed)
    assert fixed["expert/w"] == 8 and iv.uses_base(fixed) and iv.macs(fixed) == 3 * 80
    expert = iv.with_base(fixed, False)
    assert not iv.uses_base(expert) and iv.macs(expert) == iv.macs(fixed)
    # sampling honours the rule: every sampled arch with the base has the expert at full
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = iv.sample(rng)
        assert not iv.uses_base(a) or a["expert/w"] == 8
    # relaxed MACs: p x full + (1 - p) x expected expert, exact at one-hot weights
    w = {"steps/count": torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
         "expert/w": torch.tensor([1.0, 0.0], dtype=torch.float64),
         "model/base": torch.tensor([0.25, 0.75], dtype=torch.float64)}
    assert float(iv.macs_relaxed(w)) == pytest.approx(3 * (0.75 * 80 + 0.25 * 40))
    assert ModelSpace().macs({"base": 1}) == 0
    with pytest.raises(ValueError, match="base_choice=False"):
        IntervalSpace(StepsSpace((1,)), W).with_base(iv.full(), True)


def test_mixture_space_base_intervals_round_trip_through_an_allocation():
    mix = MixtureSpace.joint(Intervals(1000, (500,)), [W, W], counts=(0, 1, 2, 3), base_choice=True)
    assert mix.base_choice and "base_choice=True" in repr(mix)
    sched = StepSchedule.from_counts(mix.intervals, (2, 1))
    arch = mix.join([{"w": 4}, {"w": 8}], sched, base_intervals=(1,))
    assert mix.base_intervals(arch) == (1,) and mix.space.macs(arch) == 2 * 40 + 80
    alloc = mix.to_allocation(arch, method="router", budget_ratio=0.5, base_trajectory_macs=640)
    assert alloc.base_intervals == (1,) and alloc.trajectory_macs == 160
    assert Allocation.from_json(alloc.to_json()) == alloc
    assert json.loads(alloc.to_json())["base_intervals"] == [1]
    assert mix.from_allocation(alloc) == arch
    # without base intervals the JSON has no such key (allocations written before stay byte-equal)
    plain = mix.to_allocation(mix.join([{"w": 4}, {"w": 8}], sched), method="router", budget_ratio=0.5,
                              base_trajectory_macs=640)
    assert plain.base_intervals == () and "base_intervals" not in plain.to_dict()
    # a space without the choice refuses base intervals
    no_base = MixtureSpace.joint(Intervals(1000, (500,)), [W, W], counts=(0, 1, 2, 3))
    assert not no_base.base_choice and no_base.base_intervals(no_base.space.full()) == ()
    with pytest.raises(ValueError, match="not a choice"):
        no_base.join([{"w": 8}, {"w": 8}], sched, base_intervals=(0,))
    with pytest.raises(ValueError, match="base_intervals"):
        Allocation("x", 0.5, mix.intervals, alloc.archs, alloc.macs_per_expert, alloc.steps_per_expert, 640,
                   schedule=sched, base_intervals=(2,))


def test_mixture_from_allocation_serves_base_intervals_by_the_base_model():
    base = build_tiny_unet().eval()
    sup = ElasticUNet(build_tiny_unet(), importance="none")
    iv = Intervals(1000, (500,))
    mix = MixtureSpace.joint(iv, [sup.space, sup.space], counts=(1, 2), base_choice=True)
    sched = StepSchedule.from_counts(iv, (1, 2))
    arch = mix.join([sup.space.smallest(), sup.space.full()], sched, base_intervals=(1,))
    alloc = mix.to_allocation(arch, method="search", budget_ratio=1.0, base_trajectory_macs=10 ** 12)
    with pytest.raises(ValueError, match="pass base="):
        MixtureOfExperts.from_allocation(alloc, sup)
    moe = MixtureOfExperts.from_allocation(alloc, sup, base=base)
    assert moe.expert_for(1) is base and moe.archs[1] is None
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([900, 900])
    with torch.no_grad():
        assert torch.equal(moe(x, t).sample, base(x, t).sample)
    mats = MixtureOfExperts.from_allocation(alloc, sup, base=base, materialize=True)
    assert mats.expert_for(1) is base


def test_finetune_keeps_base_intervals_as_the_pretrained_model(tmp_path, experts_dir):  # noqa: F811
    sup = ElasticUNet.from_pretrained(experts_dir / "expert_0")
    full = sup.space.full()
    alloc = Allocation("search", 0.9, IV, (sup.space.smallest(), full),
                       (sup.space.macs(sup.space.smallest()), sup.space.macs(full)), (4, 6),
                       10 * sup.space.total_macs, base_intervals=(1,))
    settings = ExpertTrainSettings(steps=2, batch_size=4, checkpoint_every=10)
    out = tmp_path / "mixtures" / "search-0.9"
    finetune_allocation(alloc, experts_dir, _images(16), settings, out, scheduler_config=SCHED, progress=False)
    pipe = MixturePipeline.from_pretrained(out)
    assert pipe.mixture.allocation.base_intervals == (1,)
    from experts.expert_folder import load_supernet

    pretrained = load_supernet(experts_dir).plain_unet()
    served = pipe.mixture.expert_for(1)
    for (name, a), (_, b) in zip(sorted(served.state_dict().items()), sorted(pretrained.state_dict().items())):
        assert torch.equal(a, b), name  # untouched: the base model itself
    assert json.loads((out / "finetune.json").read_text())["identity"]["base_intervals"] == [1]


def test_joint_router_scores_the_base_variant_and_can_pick_it():
    from router.joint import JointSettings, joint_allocation, route_joint
    from router.settings import RouterSettings
    from router.synthetic import SyntheticMixture
    from router.train import fit_agents

    bench = SyntheticMixture.default(seed=0, num_experts=2, num_blocks=2, num_skips=1)
    fit = fit_agents(bench.space, bench.task_loss, [0.2, 1.0], RouterSettings(steps=5, budget_conditioned=True))
    seen = []

    def score(schedule, archs):  # the base model is better than any expert here
        seen.append(tuple(a is None for a in archs))
        return sum(0.0 if a is None else 1.0 for a in archs) + 1.0 / schedule.num_steps

    settings = JointSettings(max_steps=20, base_choice=True)
    [out] = route_joint(fit.agents[1.0], bench.mixture, [0.5], score, settings,
                        base_trajectory_macs=fit.ref_macs, budget_range=fit.budget_range)
    assert any(any(s) for s in seen), "no candidate with the base model was scored"
    assert out.best.base_intervals, "the better base variant was not chosen"
    assert out.evaluations <= 2 * settings.max_schedules
    alloc = joint_allocation(out, bench.mixture, base_trajectory_macs=fit.ref_macs)
    assert alloc.base_intervals == out.best.base_intervals
    assert all(alloc.archs[k] == bench.mixture.parts[k].full() for k in alloc.base_intervals)
    assert any(c.get("base_intervals") == list(out.best.base_intervals) for c in alloc.info["candidates"])
    # without base_choice the router never asks for the base model
    seen.clear()
    route_joint(fit.agents[1.0], bench.mixture, [0.5], score, JointSettings(max_steps=20),
                base_trajectory_macs=fit.ref_macs, budget_range=fit.budget_range)
    assert not any(any(s) for s in seen)
