"""Trajectory distillation: an expert learns to make the mixture's DDIM steps land where the base
model's reference sampler lands."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

from experts.allocation import Allocation
from experts.explicit_timesteps import set_explicit_timesteps
from experts.finetune import finetune_allocation
from experts.intervals import Intervals
from experts.pipeline import MixturePipeline
from experts.schedule import StepSchedule
from experts.schedule_distill import (
    DistillSettings,
    ScheduleTeacher,
    _alpha,
    ddim_landing,
    distill_along_schedule,
)
from experts.train_loop import ExpertTrainSettings
from search_spaces import ElasticUNet
from search_spaces.errors import UserError
from tests.conftest import build_tiny_unet
from tests.experts.test_finetune import experts_dir  # noqa: F401  (module fixture: tiny trained experts)
from tests.experts.test_training import _images

REFERENCE = list(range(980, -1, -20))  # a 50-step DDIM grid of 1000 training timesteps


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_landing_is_the_schedulers_step(clip):
    sched = set_explicit_timesteps(DDIMScheduler(clip_sample=clip), [900, 500, 120, 30])
    x, eps = 1.5 * torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    for t, nxt in zip([900, 500, 120, 30], [500, 120, 30, -1]):
        ref = sched.step(eps, t, x).prev_sample
        mine = ddim_landing(eps, x, _alpha(sched, torch.full((3,), t)), _alpha(sched, torch.full((3,), nxt)),
                            1.0 if clip else None)
        assert torch.equal(ref, mine)


def test_the_teacher_walks_the_reference_grid_and_its_target_lands_there():
    sched = DDIMScheduler(clip_sample=False)
    model = build_tiny_unet().eval()
    teacher = ScheduleTeacher(model, sched, [900, 500, 120], reference=REFERENCE)
    assert teacher.chain(900) == [900] + list(range(880, 500, -20))
    x = torch.randn(3, 1, 16, 16)
    t = torch.tensor([900, 500, 120])
    eps, land = teacher.target(x, t)
    for i, tv in enumerate([900, 500, 120]):  # the teacher's points: DDIM along the chain, step by step
        chain = teacher.chain(tv) + ([teacher.next_of[tv]] if teacher.next_of[tv] >= 0 else [])
        s = set_explicit_timesteps(DDIMScheduler(clip_sample=False), chain)
        y = x[i:i + 1]
        with torch.no_grad():
            for c in teacher.chain(tv):
                y = s.step(model(y, c).sample, c, y).prev_sample
        torch.testing.assert_close(land[i:i + 1], y, rtol=1e-5, atol=1e-4)  # batched calls: float order
    # one DDIM step with the target epsilon lands on the teacher's point
    nxt = torch.tensor([500, 120, -1])
    torch.testing.assert_close(ddim_landing(eps, x, _alpha(sched, t), _alpha(sched, nxt), None), land,
                               rtol=0, atol=1e-4)


def test_on_the_reference_grid_the_target_is_the_teachers_prediction():
    sched = DDIMScheduler(clip_sample=False)
    model = build_tiny_unet().eval()
    teacher = ScheduleTeacher(model, sched, REFERENCE, reference=REFERENCE)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([980, 40])
    eps, _ = teacher.target(x, t)
    with torch.no_grad():
        pred = model(x, t).sample
    torch.testing.assert_close(eps, pred, rtol=0, atol=2e-4)


def test_distillation_lowers_the_loss_and_resumes_bitwise(tmp_path):
    sched = DDIMScheduler(clip_sample=False)
    base = build_tiny_unet().eval().requires_grad_(False)
    teacher = ScheduleTeacher(base, sched, [980, 600, 300], reference=REFERENCE)
    images = _images(32)
    settings = DistillSettings(steps=8, batch_size=8, learning_rate=3e-3, checkpoint_every=2)
    one = copy.deepcopy(base).requires_grad_(True)
    log = distill_along_schedule(one, teacher, images, [980, 600, 300], settings, tmp_path / "a", {"x": 1},
                                 progress=False)
    assert log.step == 8 and log.losses[-1]["loss"] < log.losses[0]["loss"], log.losses
    two = copy.deepcopy(base).requires_grad_(True)
    first = distill_along_schedule(two, teacher, images, [980, 600, 300], settings, tmp_path / "b", {"x": 1},
                                   progress=False, max_steps_this_call=3)
    assert first.step == 3
    fresh = copy.deepcopy(base).requires_grad_(True)  # a new process: weights come from the checkpoint
    done = distill_along_schedule(fresh, teacher, images, [980, 600, 300], settings, tmp_path / "b", {"x": 1},
                                  progress=False)
    assert done.step == 8 and [r["loss"] for r in done.losses] == [r["loss"] for r in log.losses]
    for p, q in zip(one.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(UserError, match="other settings"):
        distill_along_schedule(copy.deepcopy(base).requires_grad_(True), teacher, images, [980, 600, 300],
                               settings, tmp_path / "b", {"x": 2}, progress=False)


def test_finetune_allocation_trajectory_tunes_every_interval(tmp_path, experts_dir):  # noqa: F811
    iv = Intervals(1000, (400,))
    sup = ElasticUNet.from_pretrained(experts_dir / "expert_0")
    full = sup.space.full()
    sched = StepSchedule.from_timesteps(iv, [900, 600, 300, 100])
    alloc = Allocation("search", 0.1, iv, (sup.space.smallest(), full),
                       (sup.space.macs(sup.space.smallest()), sup.space.total_macs), sched.steps_per_interval,
                       50 * sup.space.total_macs, schedule=sched, base_intervals=(1,))
    sampler = DDIMScheduler.from_config(DDPMScheduler().config)
    settings = ExpertTrainSettings(steps=4, batch_size=4, learning_rate=1e-3, checkpoint_every=2)
    out = tmp_path / "mixtures" / "search-0.1"
    kw = dict(scheduler_config=dict(DDPMScheduler().config), sampler_scheduler=sampler, progress=False,
              target="trajectory", reference_timesteps=REFERENCE)
    finetune_allocation(alloc, experts_dir, _images(32), settings, out, **kw)
    assert str(tmp_path) not in (out / "finetune.json").read_text()  # relocatable: no absolute path
    identity = json.loads((out / "finetune.json").read_text())["identity"]
    assert identity["target"] == {"name": "trajectory", "timesteps": [900, 600, 300, 100], "reference": REFERENCE}
    pipe = MixturePipeline.from_pretrained(out)
    moe = pipe.mixture
    teacher = ElasticUNet.from_pretrained(experts_dir / "supernet").plain_unet()
    tuned_base = moe.expert_for(1)  # the base-served interval: tuned from the base weights
    assert any(not torch.equal(p, q) for p, q in zip(tuned_base.parameters(), teacher.parameters()))
    # the same call reuses it; the denoising target is another mixture
    finetune_allocation(alloc, experts_dir, _images(32), settings, out, **kw)
    with pytest.raises(UserError, match="other settings"):
        finetune_allocation(alloc, experts_dir, _images(32), settings, out, scheduler_config=kw["scheduler_config"],
                            sampler_scheduler=sampler, progress=False)
    with pytest.raises(UserError, match="DDIM"):
        finetune_allocation(alloc, experts_dir, _images(32), settings, tmp_path / "euler",
                            **{**kw, "sampler_scheduler": EulerDiscreteScheduler.from_config(sampler.config)})
