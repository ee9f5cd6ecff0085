"""The mixture of experts: routing, exactness against the base model, save/load, the pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler

from experts.allocation import Allocation
from experts.intervals import Intervals
from experts.mixture import MixtureOfExperts
from experts.pipeline import MixturePipeline, load_model_folder
from nas.sampling import generate, make_scheduler, sampling_timesteps
from search_spaces import ElasticUNet
from search_spaces.errors import UserError
from tests.conftest import build_tiny_cond_unet, build_tiny_unet

IV3 = Intervals(1000, (300, 700))


def _sample(model, sampler: str, steps: int = 6, n: int = 3, seed: int = 0, **kw) -> torch.Tensor:
    sched = make_scheduler(sampler, dict(DDPMScheduler().config))
    return generate(model, sched, num_images=n, num_steps=steps, batch_size=n, seed=seed,
                    sample_shape=(1, 16, 16), progress=False, **kw)


def _mixed_archs(net: ElasticUNet) -> list:
    return [net.space.full(), net.space.smallest(), net.space.uniform(0.5)]


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_full_arch_mixture_reproduces_base_samples_exactly(sampler):
    base = build_tiny_unet()
    experts = [ElasticUNet(base, importance="none") for _ in range(3)]
    moe = MixtureOfExperts(IV3, experts, [e.space.full() for e in experts])
    want = _sample(base, sampler)
    got = _sample(moe, sampler)
    assert torch.equal(got, want)
    # the importance-ordered supernet (what train-experts starts from) permutes channels: the
    # function is the same, only the summation order changes
    ordered = [ElasticUNet(base) for _ in range(3)]
    got2 = _sample(MixtureOfExperts(IV3, ordered), sampler)
    assert (got2 - want).abs().max() < 1e-4


def test_mixed_timestep_batch_equals_per_sample_calls():
    net = ElasticUNet(build_tiny_unet())
    mat = net.materialize(net.space.smallest())
    moe = MixtureOfExperts(IV3, [net, net, mat], [net.space.full(), net.space.uniform(0.5), None])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 16, 16, generator=g)
    t = torch.tensor([10, 500, 999, 299, 300, 700])
    out = moe(x, t).sample
    for i in range(6):
        k = IV3.index(int(t[i]))
        e = moe.expert_for(k)
        if k < 2:
            net.set_active(moe.archs[k])
        ref = e(x[i:i + 1], t[i:i + 1]).sample
        assert torch.allclose(out[i:i + 1], ref, atol=1e-5), i
    # the three experts really differ, so routing errors would show
    assert not torch.allclose(out[0], mat(x[:1], t[:1]).sample[0], atol=1e-3)


def test_mixed_batch_splits_conditioning():
    unet = build_tiny_cond_unet()
    net = ElasticUNet(unet)
    moe = MixtureOfExperts(Intervals(1000, (500,)), [net, net], [net.space.full(), net.space.smallest()])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 8, 8, generator=g)
    ctx = torch.randn(4, 5, 12, generator=g)
    t = torch.tensor([900, 5, 600, 100])
    out = moe(x, t, encoder_hidden_states=ctx).sample
    for i in range(4):
        net.set_active(moe.archs[int(t[i] >= 500)])
        ref = net(x[i:i + 1], t[i:i + 1], encoder_hidden_states=ctx[i:i + 1]).sample
        assert torch.allclose(out[i:i + 1], ref, atol=1e-5)


def test_mixture_checks_its_inputs():
    base = build_tiny_unet()
    with pytest.raises(ValueError, match="2 experts for 3 intervals"):
        MixtureOfExperts(IV3, [base, base])
    with pytest.raises(ValueError, match="not a supernet"):
        MixtureOfExperts(IV3, [base] * 3, [None, {"x": 1}, None])
    moe = MixtureOfExperts(IV3, [base] * 3)
    with pytest.raises(ValueError, match="outside"):
        moe(torch.zeros(1, 1, 16, 16), torch.tensor([1000.5]))
    net = ElasticUNet(base)
    with pytest.raises(ValueError):
        MixtureOfExperts(IV3, [net] * 3, [{"nope": 1}, None, None])


def test_macs_follow_the_archs():
    net = ElasticUNet(build_tiny_unet())
    archs = _mixed_archs(net)
    moe = MixtureOfExperts(IV3, [net] * 3, archs)
    per = moe.macs_per_expert()
    assert per == [net.space.macs(a) for a in archs]
    assert per[0] > per[2] > per[1]
    ts = sampling_timesteps(make_scheduler("ddim", dict(DDPMScheduler().config)), 10)
    counts = IV3.steps_per_interval(ts)
    assert moe.trajectory_macs(ts) == sum(c * m for c, m in zip(counts, per))
    mat = MixtureOfExperts.from_allocation(_allocation(net, archs), net, materialize=True)
    assert mat.macs_per_expert() == per  # the materialised count agrees with the analytic one


def _allocation(net: ElasticUNet, archs) -> Allocation:
    macs = [net.space.macs(a) for a in archs]
    return Allocation("test", 1.0, IV3, tuple(archs), tuple(macs), (3, 4, 3), 10 * net.space.total_macs)


@pytest.mark.parametrize("materialize", [False, True])
def test_save_load_gives_identical_samples(tmp_path, materialize):
    net = ElasticUNet(build_tiny_unet())
    archs = _mixed_archs(net)
    alloc = _allocation(net, archs)
    moe = MixtureOfExperts.from_allocation(alloc, net, materialize=materialize)
    before = _sample(moe, "ddim")
    moe.save_pretrained(tmp_path / "mix")
    meta = json.loads((tmp_path / "mix" / "mixture.json").read_text())
    assert meta["expert_of_interval"] == ([0, 0, 0] if not materialize else [0, 1, 2])
    assert {e["kind"] for e in meta["experts"]} == ({"supernet"} if not materialize else {"materialized"})
    again = MixtureOfExperts.from_pretrained(tmp_path / "mix")
    assert again.allocation == alloc and again.intervals == IV3
    assert torch.equal(_sample(again, "ddim"), before)
    # and through the generic folder loader the CLI uses
    loaded = load_model_folder(tmp_path / "mix")
    assert loaded.kind == "mixture" and loaded.trajectory_macs([999, 500, 0]) == sum(alloc.macs_per_expert)


def test_save_records_the_active_arch_of_an_unset_supernet(tmp_path):
    net = ElasticUNet(build_tiny_unet())
    net.set_active(net.space.smallest())
    moe = MixtureOfExperts(Intervals(1000, ()), [net])
    before = moe(torch.ones(1, 1, 16, 16), 3).sample
    moe.save_pretrained(tmp_path / "m")
    again = MixtureOfExperts.from_pretrained(tmp_path / "m")
    assert again.archs[0] == net.space.smallest()
    assert torch.equal(again(torch.ones(1, 1, 16, 16), 3).sample, before)


def test_pipeline_matches_ddim_pipeline_and_round_trips(tmp_path):
    base = build_tiny_unet()
    ref_pipe = DDIMPipeline(unet=base, scheduler=DDIMScheduler())
    ref_pipe.set_progress_bar_config(disable=True)
    want = ref_pipe(batch_size=2, num_inference_steps=5, generator=torch.manual_seed(3), output_type="np").images
    pipe = MixturePipeline(MixtureOfExperts(IV3, [base] * 3), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    got = pipe(batch_size=2, num_inference_steps=5, generator=torch.manual_seed(3), output_type="np").images
    assert got.shape == (2, 16, 16, 1)
    assert (got == want).all()

    net = ElasticUNet(base)
    pipe = MixturePipeline(MixtureOfExperts(IV3, [net] * 3, _mixed_archs(net)), DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    a = pipe(batch_size=2, num_inference_steps=7, generator=torch.manual_seed(0), output_type="pt").images
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["mixture"] == ["experts.mixture", "MixtureOfExperts"]
    again = MixturePipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.scheduler, DDPMScheduler)
    b = again(batch_size=2, num_inference_steps=7, generator=torch.manual_seed(0), output_type="pt").images
    assert torch.equal(a, b)
    pil = again(batch_size=1, num_inference_steps=2, generator=torch.manual_seed(0)).images
    assert pil[0].size == (16, 16)
    loaded = load_model_folder(tmp_path / "pipe")
    assert loaded.kind == "mixture-pipeline" and loaded.scheduler_config["_class_name"] == "DDPMScheduler"


def test_load_model_folder_rejects_other_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        load_model_folder(tmp_path / "empty")
    with pytest.raises(UserError, match="not a mixture folder"):
        MixtureOfExperts.from_pretrained(tmp_path / "empty")
