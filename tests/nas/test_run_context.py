"""nas.run.RunContext: nothing loaded by the constructor, each artefact loaded once, clear errors."""

from __future__ import annotations

import pytest

from experts.intervals import Intervals
from nas.cli import main
from nas.config import load_config
from nas.errors import UserError
from nas.run import RunContext, RunDir
from tests.conftest import build_tiny_unet

IV = Intervals(1000, (400,))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A run with a tiny base UNet and two experts (0 elastic steps) and its held-out set."""
    root = tmp_path_factory.mktemp("run-context")
    folder = root / "tiny-unet"
    build_tiny_unet().save_pretrained(folder, safe_serialization=True)
    overrides = [
        f"run_root={root / 'runs'}", "name=x", "device=cpu", f"model.base={folder}", "data.limit=64",
        "sampling.num_steps=4", "experts.train_steps=0", "experts.batch_size=4", "experts.heldout_per_interval=8",
    ]
    IV.save(RunDir(root / "runs", "x").intervals_path)
    assert main(["train-experts", *[a for o in overrides for a in ("--set", o)], "-q"]) == 0
    return load_config(None, overrides)


def test_the_constructor_loads_nothing_and_each_artefact_is_loaded_once(tiny):
    ctx = RunContext(tiny, device="cpu")
    assert ctx._cache == {}
    assert ctx.base is ctx.base and ctx.scheduler is ctx.scheduler
    assert ctx.experts() is ctx.experts() and ctx.heldout() is ctx.heldout()
    assert ctx.intervals() == IV and ctx.experts()[0] == IV and ctx.has_experts()
    assert len(ctx.timesteps) == 4 and sum(ctx.steps_per_expert()) == 4
    assert ctx.base_traj == ctx.base_macs_per_call * 4


def test_the_mixture_space_is_one_part_per_expert_weighted_by_steps(tiny):
    ctx = RunContext(tiny, device="cpu")
    mixture = ctx.mixture_space()
    assert list(mixture.space.parts) == ["e0", "e1"] and mixture.intervals == IV
    assert [mixture.space.weights[p] for p in mixture.space.parts] == list(ctx.steps_per_expert())
    assert "experts" not in ctx._cache  # the spaces alone do not load the experts on the run's device
    assert ctx.mixture_space() is mixture


def test_data_is_the_experts_split_and_generate_samples(tiny):
    ctx = RunContext(tiny, device="cpu", progress=False)
    train, heldout = ctx.data()
    assert heldout is not None and heldout.intervals == IV and train.shape[1:] == tuple(ctx.base.sample_shape)
    images = ctx.generate(ctx.base.unet, 2, seed=0, num_steps=2)
    assert tuple(images.shape) == (2, *ctx.base.sample_shape)


def test_missing_artefacts_are_user_errors(tmp_path):
    ctx = RunContext(load_config(None, [f"run_root={tmp_path}", "name=empty"]), device="cpu")
    assert not ctx.has_experts() and ctx.intervals() is None and ctx.allocation("router", 0.5) is None
    assert ctx.results() == []
    with pytest.raises(UserError, match="heldout.safetensors does not exist"):
        ctx.heldout()
    run = ctx.prepare()
    assert run.config_path.is_file()


def test_generate_along_explicit_timesteps_matches_num_steps(tiny):
    ctx = RunContext(tiny, device="cpu", progress=False)
    by_count = ctx.generate(ctx.base.unet, 2, seed=3, num_steps=4)
    by_list = ctx.generate(ctx.base.unet, 2, seed=3, num_steps=4, timesteps=list(ctx.timesteps))
    assert (by_count == by_list).all()


def test_trajectory_proxy_scores_on_the_evaluation_features_and_caches_its_reference(tiny):
    import dataclasses

    cfg = dataclasses.replace(tiny, schedule=dataclasses.replace(tiny.schedule, proxy_images=8, reference_steps=4))
    ctx = RunContext(cfg, device="cpu", progress=False)
    proxy = ctx.trajectory_proxy()
    assert ctx.trajectory_proxy() is proxy and proxy.reference_timesteps == list(ctx.timesteps)
    score = proxy.score(ctx.base.unet, ctx.timesteps)
    assert score.distance == 0.0 and score.fid is not None and score.num_images == 8
    assert proxy.score(ctx.base.unet, ctx.timesteps[::2]).distance > 0
    files = list(ctx.run.proxy_dir.glob("reference-*.pt"))
    assert len(files) == 1 and str(ctx.run.path) not in files[0].read_bytes().decode("latin-1")
    again = RunContext(cfg, device="cpu", progress=False).trajectory_proxy()
    assert again._load_cached() is not None and (again.reference_samples == proxy.reference_samples).all()


def test_the_joint_space_searches_steps_with_the_experts_and_the_steps_space_pins_them(tiny):
    import dataclasses

    ctx = RunContext(tiny, device="cpu")
    assert ctx.step_counts() == [(1, 2, 3, 4), (0, 1, 2, 3, 4)]  # at most sampling.num_steps; t=0 needs a step
    joint = ctx.mixture_space(joint=True)
    assert joint.is_joint and ctx.mixture_space(joint=True) is joint and not ctx.mixture_space().is_joint
    assert joint.space.max_steps == 4
    steps = ctx.steps_space()
    assert steps.is_joint and steps.split(steps.space.smallest()) == [p.full() for p in ctx.mixture_space().parts]
    on = RunContext(dataclasses.replace(tiny, schedule=dataclasses.replace(tiny.schedule, joint=True, counts=(0, 2))),
                    device="cpu")
    assert on.mixture_space().is_joint and on.step_counts() == [(2,), (0, 2)]
    bad = RunContext(dataclasses.replace(tiny, schedule=dataclasses.replace(tiny.schedule, counts=(5,))), device="cpu")
    with pytest.raises(UserError, match="schedule.counts: interval 0"):
        bad.step_counts()


def test_the_proxy_reference_key_does_not_depend_on_how_paths_are_written(tiny):
    from nas.run._proxy import reference_cache_key
    from nas.search_objective import absolute_config

    import dataclasses
    import os

    relative = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, base=os.path.relpath(tiny.model.base)))
    assert relative.model.base != tiny.model.base
    assert reference_cache_key(RunContext(relative)) == reference_cache_key(RunContext(absolute_config(relative)))


def test_a_known_point_with_no_step_in_the_lowest_interval_is_skipped_not_an_error(tiny):
    """DPM-Solver++ at few steps visits no timestep below the lowest boundary: the "fewer_steps" seed point
    then has counts (0, k), which no spacing can place; the search skips it instead of stopping."""
    from experts.schedule import StepSchedule
    from nas.search_objective import _join_placed

    ctx = RunContext(tiny, device="cpu")
    joint = ctx.mixture_space(joint=True)
    archs = [p.full() for p in ctx.mixture_space().parts]
    high_only = StepSchedule.from_timesteps(IV, [800, 600], end_in_lowest=False)
    assert _join_placed(joint, archs, high_only, ("leading", "uniform")) is None
    placed = _join_placed(joint, archs, StepSchedule.from_timesteps(IV, [800, 600, 0]), ("leading", "uniform"))
    assert placed is not None and joint.space.macs(placed) > 0
