"""The joint space's rule methods: fewer_steps_tuned (base, fewer steps) and uniform_steps (half
width, as many steps as the budget buys): what they write, and that a rewrite keeps the file."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from diffusers import DDIMScheduler

from benchmarks.methods import FewerStepsTunedMethod, UniformStepsMethod
from experts.allocation import Allocation
from experts.intervals import Intervals
from nas.config import load_config
from nas.sampling import sampling_timesteps
from search_spaces import ElasticUNet
from tests.conftest import build_tiny_unet


@pytest.fixture(scope="module")
def ctx():
    net = ElasticUNet(build_tiny_unet())
    iv = Intervals(1000, (300, 600))
    return SimpleNamespace(cfg=load_config(None, ["sampling.num_steps=20"]), scheduler=DDIMScheduler(),
                           experts=lambda: (iv, [net] * 3), space=net.space)


@pytest.mark.parametrize("budget", [0.1, 0.3, 0.5])
def test_fewer_steps_tuned_is_the_base_on_every_interval_along_fewer_steps(tmp_path, ctx, budget):
    path = tmp_path / f"fewer_steps_tuned-{budget:g}.json"
    assert FewerStepsTunedMethod().write_allocation(ctx, budget, path) is None
    alloc = Allocation.load(path)
    n = int(budget * 20)
    assert alloc.base_intervals == (0, 1, 2) and alloc.timesteps() == sampling_timesteps(ctx.scheduler, n)
    assert alloc.achieved_ratio == pytest.approx(n / 20) and alloc.feasible


@pytest.mark.parametrize("budget", [0.1, 0.3, 0.5])
def test_uniform_steps_buys_as_many_half_width_steps_as_fit(tmp_path, ctx, budget):
    path = tmp_path / f"uniform_steps-{budget:g}.json"
    assert UniformStepsMethod().write_allocation(ctx, budget, path) is None
    alloc = Allocation.load(path)
    arch = ctx.space.uniform(0.5)
    assert all(a == arch for a in alloc.archs) and not alloc.base_intervals
    n = len(alloc.timesteps())
    per_step = ctx.space.macs(arch) / ctx.space.total_macs / 20  # budget share of one half-width step
    assert alloc.feasible and (n + 1) * per_step > budget >= n * per_step
    assert alloc.timesteps() == sampling_timesteps(ctx.scheduler, n)
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    UniformStepsMethod().write_allocation(ctx, budget, path)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_uniform_steps_says_when_one_step_is_over_the_budget(tmp_path, ctx):
    reason = UniformStepsMethod().write_allocation(ctx, 0.01, tmp_path / "x.json")
    assert reason is not None and "one step" in reason
