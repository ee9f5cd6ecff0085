"""Losses and per-interval elastic training: timesteps, targets, sandwich training, resume."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from experts.intervals import Intervals
from experts.denoising import LossBatch, denoising_loss, expert_loss, interval_timesteps, make_batch, model_target
from experts.losses import HeldOutSet, make_heldout, proxy_loss
from experts.mixture import MixtureOfExperts
from experts.expert_folder import load_experts, load_supernet
from experts.train_loop import ExpertTrainSettings
from experts.training import prepare_expert_jobs, run_expert_job, train_experts
from search_spaces import ElasticUNet
from search_spaces.errors import UserError
from tests.conftest import build_tiny_unet

IV = Intervals(1000, (400,))
SCHED = dict(DDPMScheduler().config)


def _images(n: int = 24, seed: int = 0) -> torch.Tensor:
    """Smooth blobs in [-1, 1]: (n, 1, 16, 16)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    c = torch.rand(n, 2, generator=g) - 0.5
    r = 0.2 + 0.3 * torch.rand(n, generator=g)
    d = (xx[None] - c[:, :1, None]) ** 2 + (yy[None] - c[:, 1:, None]) ** 2  # (n,16,16)
    return (torch.exp(-d / r[:, None, None] ** 2) * 2 - 1).unsqueeze(1)


# ---------------------------------------------------------------------------------- losses


def test_interval_timesteps_stay_in_their_interval():
    iv = Intervals(1000, (123, 800))
    g = torch.Generator().manual_seed(0)
    for k, (lo, hi) in enumerate(iv.spans()):
        for stratified in (False, True):
            t = interval_timesteps(iv, k, 500, g, stratified=stratified)
            assert t.dtype == torch.long and int(t.min()) >= lo and int(t.max()) < hi
    strat = interval_timesteps(iv, 2, 4, g, stratified=True)
    assert [int(800 + 50 * i) <= int(x) < 800 + 50 * (i + 1) for i, x in enumerate(strat)] == [True] * 4
    with pytest.raises(ValueError):
        interval_timesteps(iv, 3, 2)


def test_targets_follow_prediction_type():
    x0, noise, t = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor([1, 500, 999])
    eps = DDPMScheduler()
    v = DDPMScheduler(prediction_type="v_prediction")
    assert torch.equal(model_target(eps, x0, noise, t), noise)
    assert torch.allclose(model_target(v, x0, noise, t), v.get_velocity(x0, noise, t))
    # a model that predicts the velocity exactly has zero v-loss and a non-zero epsilon loss
    oracle = lambda x, tt: v.get_velocity(x0, noise, t)  # noqa: E731
    assert float(denoising_loss(oracle, x0, t, noise, v)) < 1e-10
    assert float(denoising_loss(oracle, x0, t, noise, eps)) > 1e-3


def test_expert_loss_terms():
    net = ElasticUNet(build_tiny_unet())
    teacher = net.plain_unet()
    sched = DDPMScheduler()
    batch = make_batch(_images(), IV, 1, 4, torch.Generator().manual_seed(0))
    assert isinstance(batch, LossBatch) and int(batch.t.min()) >= 400
    with torch.no_grad():
        full = expert_loss(net, teacher, batch, sched, distill_weight=2.0)
    assert float(full.distill) < 1e-10  # full arch == teacher
    net.set_active(net.space.smallest())
    small = expert_loss(net, teacher, batch, sched, distill_weight=2.0)
    assert small.total.requires_grad and float(small.distill.detach()) > 0
    assert torch.allclose(small.total, small.denoise + 2.0 * small.distill)
    with torch.no_grad():
        none = expert_loss(net, teacher, batch, sched, distill_weight=0.0)
    assert float(none.distill) == 0.0


def test_proxy_loss_per_interval_and_weighted_total(tmp_path):
    base = build_tiny_unet()
    net = ElasticUNet(base)
    held = make_heldout(_images(), IV, n_per_interval=6, seed=3)
    held.save(tmp_path / "h.safetensors")
    again = HeldOutSet.load(tmp_path / "h.safetensors")
    assert again.intervals == IV and all(torch.equal(a, b) for a, b in zip(held.t, again.t))
    sched = DDPMScheduler()
    archs = [net.space.full(), net.space.smallest()]
    pl = proxy_loss([net, net], archs, held, sched, step_weights=[1, 3])
    assert pl.weights == (0.25, 0.75)
    assert pl.total == pytest.approx(0.25 * pl.per_interval[0] + 0.75 * pl.per_interval[1])
    assert net.active == net.space.full()  # the previous arch is restored
    # a mixture is scored with its own archs; the base model alone equals the full arch
    moe = MixtureOfExperts(IV, [net, net], archs)
    assert proxy_loss(moe, None, held, sched, step_weights=[1, 3]).per_interval == pytest.approx(pl.per_interval)
    base_pl = proxy_loss(base, None, held, sched)
    assert base_pl.per_interval[0] == pytest.approx(pl.per_interval[0], rel=1e-4)
    assert base_pl.per_interval[1] != pytest.approx(pl.per_interval[1], rel=1e-4)
    with pytest.raises(ValueError, match="not a supernet"):
        proxy_loss(base, archs, held, sched)


# ---------------------------------------------------------------------------------- training


def _settings(**kw) -> ExpertTrainSettings:
    base = dict(steps=4, batch_size=4, learning_rate=1e-3, random_archs=1, checkpoint_every=2, seed=0)
    base.update(kw)
    return ExpertTrainSettings(**base)


def _weights(path) -> dict:
    return load_file(str(path / "diffusion_pytorch_model.safetensors"))


def test_train_experts_writes_experts_and_reuses_them(tmp_path):
    base = build_tiny_unet()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    out = tmp_path / "experts"
    res = train_experts(base, IV, _images(), _settings(), out, scheduler_config=SCHED, progress=False)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # base untouched
    assert [r.path.name for r in res.experts] == ["expert_0", "expert_1"] and all(r.steps == 4 for r in res.experts)
    assert json.loads((out / "intervals.json").read_text())["boundaries"] == [400]
    state = json.loads((out / "checkpoints" / "expert_0" / "state.json").read_text())
    assert state["step"] == 4 and set(state["losses"][0]) >= {"loss", "loss_full", "loss_smallest", "distill"}
    intervals, experts = load_experts(out)
    assert intervals == IV and all(isinstance(e, ElasticUNet) for e in experts)
    start = load_supernet(out)
    w0, w1, ws = _weights(out / "expert_0"), _weights(out / "expert_1"), _weights(out / "supernet")
    assert any(not torch.equal(w0[k], ws[k]) for k in ws)  # trained
    assert any(not torch.equal(w0[k], w1[k]) for k in ws)  # on different intervals
    assert start.space.dimensions() == experts[0].space.dimensions()
    stamp = (out / "expert_0" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    again = train_experts(base, IV, _images(), _settings(), out, scheduler_config=SCHED, progress=False)
    assert (out / "expert_0" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert [r.final_loss for r in again.experts] == pytest.approx([r.final_loss for r in res.experts])


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    base = build_tiny_unet()
    full = train_experts(base, IV, _images(), _settings(steps=5), tmp_path / "a", scheduler_config=SCHED,
                         progress=False)
    part = train_experts(base, IV, _images(), _settings(steps=5), tmp_path / "b", scheduler_config=SCHED,
                         progress=False, max_steps_this_call=3)
    assert [r.steps for r in part.experts] == [3, 3]
    assert not (tmp_path / "b" / "expert_0").exists()  # not final yet
    resumed = train_experts(base, IV, _images(), _settings(steps=5), tmp_path / "b", scheduler_config=SCHED,
                            progress=False)
    assert [r.steps for r in resumed.experts] == [5, 5]
    for k in range(2):
        wa, wb = _weights(tmp_path / "a" / f"expert_{k}"), _weights(tmp_path / "b" / f"expert_{k}")
        assert all(torch.equal(wa[n], wb[n]) for n in wa)
    la = json.loads((tmp_path / "a" / "checkpoints" / "expert_1" / "state.json").read_text())["losses"]
    lb = json.loads((tmp_path / "b" / "checkpoints" / "expert_1" / "state.json").read_text())["losses"]
    assert la == lb
    # more steps continue from the checkpoint
    longer = train_experts(base, IV, _images(), _settings(steps=6), tmp_path / "b", scheduler_config=SCHED,
                           progress=False, only=[0])
    assert longer.experts[0].steps == 6


def test_other_settings_or_intervals_are_refused(tmp_path):
    base = build_tiny_unet()
    out = tmp_path / "e"
    train_experts(base, IV, _images(), _settings(steps=2), out, scheduler_config=SCHED, progress=False)
    with pytest.raises(UserError, match="settings"):
        train_experts(base, IV, _images(), _settings(steps=2, learning_rate=5e-3), out, scheduler_config=SCHED,
                      progress=False)
    with pytest.raises(UserError, match="intervals"):
        train_experts(base, Intervals(1000, (500,)), _images(), _settings(steps=2), out, scheduler_config=SCHED,
                      progress=False)


def test_jobs_run_one_expert_each(tmp_path):
    jobs = prepare_expert_jobs(build_tiny_unet(), IV, _images(), _settings(steps=2), tmp_path,
                               scheduler_config=SCHED)
    assert [j.k for j in jobs] == [0, 1]
    res = run_expert_job(jobs[1], progress=False)
    assert res.k == 1 and (tmp_path / "expert_1").is_dir() and not (tmp_path / "expert_0").exists()
    import pickle

    assert pickle.loads(pickle.dumps(jobs[0])).k == 0  # picklable for Ray tasks


def test_elastic_training_lowers_the_smallest_arch_loss(tmp_path):
    """A few dozen sandwich steps improve the smallest sub-network on its interval (held-out)."""
    base = build_tiny_unet()
    imgs = _images(64)
    held = make_heldout(_images(32, seed=9), IV, n_per_interval=32, seed=1)
    sched = DDPMScheduler()
    out = tmp_path / "e"
    train_experts(base, IV, imgs, _settings(steps=40, batch_size=16, learning_rate=2e-3, checkpoint_every=100),
                  out, scheduler_config=SCHED, progress=False, only=[1])
    start = load_supernet(out)
    tuned = ElasticUNet.from_pretrained(out / "expert_1")
    small = start.space.smallest()
    before = proxy_loss([start, start], [small, small], held, sched).per_interval[1]
    after = proxy_loss([tuned, tuned], [small, small], held, sched).per_interval[1]
    assert after < 0.8 * before
