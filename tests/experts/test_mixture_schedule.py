"""A mixture with a step schedule: saved with it, sampled along it, reproduced from a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from experts.allocation import Allocation
from experts.finetune import finetune_allocation
from experts.intervals import Intervals
from experts.mixture import MixtureOfExperts
from experts.pipeline import MixturePipeline, load_model_folder
from experts.schedule import StepSchedule
from experts.train_loop import ExpertTrainSettings
from nas.sampling import generate, make_scheduler
from search_spaces import ElasticUNet
from tests.conftest import build_tiny_unet

ROOT = Path(__file__).resolve().parents[2]
IV3 = Intervals(1000, (300, 700))
# the untrained UNets predict x0 ("sample"): an untrained noise predictor drives DPM-Solver++ and
# Euler samples far outside [-1, 1], where every pixel clamps and equal tensors would prove nothing
CFG = dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="sample").config)
SCHEDULE = StepSchedule.from_counts(IV3, (3, 0, 2), ("quadratic", "leading", "trailing"))
OLD_MIXTURE_KEYS = {"format", "version", "intervals", "experts", "expert_of_interval", "archs", "allocation",
                    "macs_per_expert", "info"}


@pytest.fixture(scope="module")
def net() -> ElasticUNet:
    return ElasticUNet(build_tiny_unet())


def _allocation(net: ElasticUNet, schedule: StepSchedule | None = SCHEDULE) -> Allocation:
    archs = (net.space.full(), net.space.smallest(), net.space.uniform(0.5))
    steps = schedule.steps_per_interval if schedule is not None else (3, 4, 3)
    return Allocation("router", 0.5, IV3, archs, tuple(net.space.macs(a) for a in archs), steps,
                      10 * net.space.total_macs, schedule=schedule)


def _generate(model, sampler: str, seed: int = 0, n: int = 4, bs: int = 2, **kw) -> torch.Tensor:
    return generate(model, make_scheduler(sampler, CFG), num_images=n, batch_size=bs, seed=seed,
                    sample_shape=(1, 16, 16), progress=False, **kw)


def _pipe(mixture: MixtureOfExperts, sampler: str) -> MixturePipeline:
    pipe = MixturePipeline(mixture, make_scheduler(sampler, CFG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_without_a_schedule_the_folder_is_as_before(tmp_path, net):
    moe = MixtureOfExperts.from_allocation(_allocation(net, None), net)
    assert moe.schedule is None and moe.timesteps() is None
    moe.save_pretrained(tmp_path / "m")
    assert set(json.loads((tmp_path / "m" / "mixture.json").read_text())) == OLD_MIXTURE_KEYS
    assert not (tmp_path / "m" / "schedule.json").exists()
    assert "schedule" not in json.loads((tmp_path / "m" / "allocation.json").read_text())
    assert MixtureOfExperts.from_pretrained(tmp_path / "m").schedule is None
    with pytest.raises(ValueError, match="no step schedule"):
        moe.trajectory_macs()


def test_the_allocations_schedule_is_kept_saved_and_costed(tmp_path, net):
    alloc = _allocation(net)
    moe = MixtureOfExperts.from_allocation(alloc, net, materialize=True)
    assert moe.schedule == SCHEDULE and moe.timesteps() == SCHEDULE.timesteps()
    assert moe.trajectory_macs() == alloc.trajectory_macs == moe.trajectory_macs(SCHEDULE.timesteps())
    moe.save_pretrained(tmp_path / "m")
    assert StepSchedule.load(tmp_path / "m" / "schedule.json") == SCHEDULE
    again = MixtureOfExperts.from_pretrained(tmp_path / "m")
    assert again.schedule == SCHEDULE and again.allocation == alloc
    assert load_model_folder(tmp_path / "m").schedule == SCHEDULE
    # a schedule of its own, without an allocation, is kept too
    plain = MixtureOfExperts(IV3, list(moe.experts), schedule=SCHEDULE)
    plain.save_pretrained(tmp_path / "p")
    assert MixtureOfExperts.from_pretrained(tmp_path / "p").schedule == SCHEDULE


def test_a_schedule_must_agree_with_the_intervals_and_allocation(net):
    alloc = _allocation(net)
    other = StepSchedule.from_counts(IV3, (1, 1, 1))
    with pytest.raises(ValueError, match="differs from the allocation"):
        MixtureOfExperts(IV3, [net] * 3, alloc.archs, alloc, schedule=other)
    with pytest.raises(ValueError, match="schedule's intervals"):
        MixtureOfExperts(IV3, [net] * 3, schedule=StepSchedule.from_counts(Intervals(1000, (500,)), (1, 1)))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++", "euler"])
def test_the_pipeline_samples_along_the_schedule_by_default(net, sampler):
    moe = MixtureOfExperts.from_allocation(_allocation(net), net, materialize=True)
    pipe = _pipe(moe, sampler)
    seen: list[int] = []
    hook = moe.register_forward_pre_hook(lambda m, args: seen.append(int(args[1])))
    default = pipe(batch_size=2, generator=torch.manual_seed(1), output_type="pt").images
    hook.remove()
    assert seen == SCHEDULE.timesteps()
    explicit = pipe(batch_size=2, generator=torch.manual_seed(1), output_type="pt", timesteps=SCHEDULE).images
    assert torch.equal(default, explicit)
    uniform = pipe(batch_size=2, generator=torch.manual_seed(1), output_type="pt", num_inference_steps=5).images
    assert (uniform - default).abs().max() > 1e-3
    # seed=: generate's images, batch by batch
    want = (_generate(moe, sampler, seed=9, timesteps=SCHEDULE) / 2 + 0.5).clamp(0, 1)
    got = torch.cat([pipe(batch_size=2, seed=9, first_image=lo, output_type="pt").images for lo in (0, 2)])
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="exactly one"):
        pipe(batch_size=1, num_inference_steps=3, timesteps=SCHEDULE)
    with pytest.raises(ValueError, match="seed= draws the noise"):
        pipe(batch_size=1, seed=0, generator=torch.manual_seed(0))


def test_a_mixture_without_schedule_uses_50_steps(net):
    pipe = _pipe(MixtureOfExperts(IV3, [build_tiny_unet()] * 3), "ddim")
    a = pipe(batch_size=1, generator=torch.manual_seed(0), output_type="pt").images
    b = pipe(batch_size=1, generator=torch.manual_seed(0), output_type="pt", num_inference_steps=50).images
    assert torch.equal(a, b)


_CHILD = textwrap.dedent("""
    import sys, torch
    from experts.pipeline import MixturePipeline
    torch.set_num_threads(int(sys.argv[1]))
    out = {}
    for folder in sys.argv[3:]:
        pipe = MixturePipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        out[folder] = torch.cat([pipe(batch_size=2, seed=9, first_image=lo, output_type="pt").images for lo in (0, 2)])
    torch.save(out, sys.argv[2])
""")


def test_from_pretrained_in_a_fresh_process_reproduces_the_scored_samples(tmp_path, net):
    moe = MixtureOfExperts.from_allocation(_allocation(net), net, materialize=True)
    want = {}
    for sampler in ("ddim", "dpm++", "euler"):
        folder = str(tmp_path / sampler)
        _pipe(moe, sampler).save_pretrained(folder)
        want[folder] = (_generate(moe, sampler, seed=9, timesteps=SCHEDULE) / 2 + 0.5).clamp(0, 1)
    result = tmp_path / "child.pt"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(torch.get_num_threads()), str(result), *want],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(result)
    for folder, x in want.items():
        assert float(((x == 0) | (x == 1)).float().mean()) < 0.1, folder  # real values, not clamped ones
        assert torch.equal(got[folder], x), folder


def test_finetune_carries_the_schedule_into_the_saved_mixture(tmp_path, net):
    alloc = _allocation(net)
    settings = ExpertTrainSettings(steps=2, batch_size=4, checkpoint_every=10)
    images = torch.rand(16, 1, 16, 16) * 2 - 1
    out = tmp_path / "mix"
    finetune_allocation(alloc, net, images, settings, out, scheduler_config=CFG, progress=False)
    pipe = MixturePipeline.from_pretrained(out)
    assert pipe.mixture.schedule == SCHEDULE and pipe.mixture.allocation == alloc
    assert json.loads((out / "finetune.json").read_text())["identity"]["schedule"] == SCHEDULE.to_dict()
    plain = _allocation(net, None)
    finetune_allocation(plain, net, images, settings, tmp_path / "plain", scheduler_config=CFG, progress=False)
    assert "schedule" not in json.loads((tmp_path / "plain" / "finetune.json").read_text())["identity"]
    assert MixturePipeline.from_pretrained(tmp_path / "plain").mixture.schedule is None
