"""nas.sampling.generate on explicit, non-uniform step schedules (DDIM, DDPM, DPM-Solver++, Euler)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

from experts.explicit_timesteps import ExplicitDDIMScheduler, set_explicit_timesteps
from experts.intervals import Intervals
from experts.mixture import MixtureOfExperts
from experts.schedule import StepSchedule
from nas.sampling import SAMPLERS, generate, make_scheduler, sampling_timesteps
from search_spaces.errors import UserError
from tests.conftest import build_tiny_unet

SCHED_CFG = dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").config)
IV3 = Intervals(1000, (300, 700))
NON_UNIFORM = StepSchedule.from_counts(IV3, (3, 1, 2), ("quadratic", "uniform", "trailing"))


@pytest.fixture(scope="module")
def unet():
    return build_tiny_unet()


def _scheduler(sampler: str):
    return make_scheduler(sampler, SCHED_CFG)


def _gen(model, sampler="ddim", *, n=3, seed=0, **kw):
    return generate(model, _scheduler(sampler), num_images=n, batch_size=n, seed=seed,
                    sample_shape=(1, 16, 16), progress=False, **kw)


class _Recorder(torch.nn.Module):
    """Records the timesteps it is called at (a mixture routes on them the same way)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x, t):
        self.seen.append(int(t))
        return self.inner(x, t)


@pytest.mark.parametrize("n", [4, 10])
def test_uniform_schedule_gives_todays_samples_bit_for_bit(unet, n):
    old = _gen(unet, "ddim", num_steps=n)
    schedule = StepSchedule.from_uniform(IV3, n, scheduler_config=SCHED_CFG)
    assert torch.equal(_gen(unet, "ddim", timesteps=schedule), old)
    assert torch.equal(_gen(unet, "ddim", timesteps=schedule.timesteps()), old)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_samplers_own_list_gives_its_num_steps_samples(unet, sampler):
    ts = sampling_timesteps(make_scheduler(sampler, SCHED_CFG), 6)
    assert torch.equal(_gen(unet, sampler, timesteps=ts), _gen(unet, sampler, num_steps=6))


def test_explicit_ddim_on_a_uniform_list_equals_native_ddim(unet):
    # the explicit stepping (not the shortcut generate takes) is bit-identical on a uniform list
    native = make_scheduler("ddim", SCHED_CFG)
    native.set_timesteps(5)
    explicit = set_explicit_timesteps(make_scheduler("ddim", SCHED_CFG), native.timesteps.tolist())
    assert isinstance(explicit, ExplicitDDIMScheduler)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    a = b = x
    for t in native.timesteps:
        eps = unet(a, t).sample
        a = native.step(eps, t, a).prev_sample
        b = explicit.step(unet(b, t).sample, t, b).prev_sample
    assert torch.equal(a, b)


def test_explicit_ddim_steps_to_the_next_timestep_of_the_list():
    sched = set_explicit_timesteps(make_scheduler("ddim", SCHED_CFG), [900, 420, 37])
    ac = sched.alphas_cumprod
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    for t, prev in [(900, 420), (420, 37), (37, None)]:
        a_t = ac[t]
        a_prev = ac[prev] if prev is not None else sched.final_alpha_cumprod
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        if sched.config.clip_sample:
            x0 = x0.clamp(-sched.config.clip_sample_range, sched.config.clip_sample_range)
        want = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        got = sched.step(eps, torch.tensor(t), x).prev_sample
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert sched.previous_timestep(t) == (prev if prev is not None else -1)
    # the scheduler state is restored after each step
    assert sched.num_inference_steps == 3
    assert sched.final_alpha_cumprod == DDIMScheduler.from_config(SCHED_CFG).final_alpha_cumprod


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_each_sampler_runs_a_non_uniform_schedule(unet, sampler):
    rec = _Recorder(unet)
    x = _gen(rec, sampler, timesteps=NON_UNIFORM, n=2)
    assert rec.seen == NON_UNIFORM.timesteps() * 1  # one batch: each timestep once, in order
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all() and x.std() > 0.01
    uniform = _gen(unet, sampler, num_steps=NON_UNIFORM.num_steps, n=2)
    assert (x - uniform).abs().max() > 1e-3  # the placement changes the samples
    assert torch.equal(x, _gen(unet, sampler, timesteps=NON_UNIFORM, n=2))  # and is reproducible


def test_each_step_of_a_schedule_goes_to_the_expert_owning_it():
    experts = [_Recorder(build_tiny_unet()) for _ in range(3)]
    moe = MixtureOfExperts(IV3, experts)
    _gen(moe, "dpm++", timesteps=NON_UNIFORM, n=2)
    for k, e in enumerate(experts):
        assert e.seen and all(IV3.index(t) == k for t in e.seen)
    assert [len(e.seen) for e in experts] == list(NON_UNIFORM.steps_per_interval)


def test_bad_timesteps_and_arguments_are_user_errors(unet):
    with pytest.raises(UserError, match="strictly descending"):
        _gen(unet, timesteps=[100, 500])
    with pytest.raises(UserError, match=r"outside \[0, 1000\)"):
        _gen(unet, timesteps=[1000, 5])
    with pytest.raises(UserError, match="exactly one of num_steps and timesteps"):
        _gen(unet, num_steps=4, timesteps=[500, 0])
    with pytest.raises(UserError, match="exactly one"):
        _gen(unet)


def test_a_scheduler_without_explicit_timesteps_is_refused(unet):
    unipc = UniPCMultistepScheduler.from_config(SCHED_CFG)
    with pytest.raises(UserError, match="UniPCMultistepScheduler cannot run explicit timesteps"):
        generate(unet, unipc, num_images=1, batch_size=1, seed=0, sample_shape=(1, 16, 16), progress=False,
                 timesteps=[900, 300, 17])


def test_euler_is_a_sampler_built_from_the_training_config():
    s = make_scheduler("euler", SCHED_CFG)
    assert type(s) is EulerDiscreteScheduler
    assert s.config.beta_schedule == "squaredcos_cap_v2" and s.config.num_train_timesteps == 1000
