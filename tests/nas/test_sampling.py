"""nas.sampling: samplers, seeding guarantees, timesteps, grids."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from nas.sampling import SAMPLERS, generate, make_scheduler, sampling_timesteps, save_grid
from search_spaces.errors import UserError
from tests.conftest import build_tiny_cond_unet, build_tiny_unet

SCHED_CFG = dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").config)


@pytest.fixture(scope="module")
def unet():
    return build_tiny_unet()


def _gen(model, sampler="ddim", *, n=4, steps=5, bs=4, seed=0, **kw):
    return generate(model, make_scheduler(sampler, SCHED_CFG), num_images=n, num_steps=steps, batch_size=bs,
                    seed=seed, sample_shape=(1, 16, 16), progress=False, **kw)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_each_sampler_gives_finite_images_of_the_right_shape(unet, sampler):
    x = _gen(unet, sampler, n=5, bs=2)
    assert x.shape == (5, 1, 16, 16)
    assert x.dtype == torch.float32 and x.device.type == "cpu"
    assert torch.isfinite(x).all()
    assert x.min() >= -1 and x.max() <= 1
    assert x.std() > 0.01  # not a constant image


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_same_seed_same_images_and_batch_size_does_not_matter(unet, sampler):
    a = _gen(unet, sampler, n=4, bs=4, seed=7)
    b = _gen(unet, sampler, n=4, bs=4, seed=7)
    assert torch.equal(a, b)
    c = _gen(unet, sampler, n=4, bs=1, seed=7)
    # per-image generators: only batched-kernel rounding may differ
    torch.testing.assert_close(a, c, atol=1e-4, rtol=0)


def test_image_i_does_not_depend_on_how_many_images_are_asked_for(unet):
    a = _gen(unet, "ddpm", n=5, bs=5, seed=2)
    b = _gen(unet, "ddpm", n=2, bs=2, seed=2)
    torch.testing.assert_close(a[:2], b, atol=1e-4, rtol=0)


def test_different_seeds_give_different_images(unet):
    a = _gen(unet, seed=0)
    b = _gen(unet, seed=1)
    assert (a - b).abs().mean() > 0.05
    # and images within one run differ from each other
    assert (a[0] - a[1]).abs().mean() > 0.05


def test_ddpm_step_noise_is_seeded(unet):
    # DDPM adds noise at each step: two runs agree only because the step noise is seeded too
    a = _gen(unet, "ddpm", seed=3, steps=8)
    b = _gen(unet, "ddpm", seed=3, steps=8)
    assert torch.equal(a, b)
    ddim = _gen(unet, "ddim", seed=3, steps=8)
    assert not torch.allclose(a, ddim)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_sampling_timesteps_match_scheduler(sampler, steps):
    sched = make_scheduler(sampler, SCHED_CFG)
    ts = sampling_timesteps(sched, steps)
    ref = make_scheduler(sampler, SCHED_CFG)
    ref.set_timesteps(steps)
    assert ts == [int(t) for t in ref.timesteps]
    assert all(0 <= t < 1000 for t in ts)
    assert ts == sorted(ts, reverse=True)


def test_generate_calls_the_model_at_sampling_timesteps():
    seen: list[int] = []
    inner = build_tiny_unet()

    class Recorder(torch.nn.Module):  # a mixture of experts would route on t like this
        def forward(self, x, t):
            seen.append(int(t))
            return inner(x, t)  # an object with .sample: normalised by generate

    sched = make_scheduler("dpm++", SCHED_CFG)
    generate(Recorder(), sched, num_images=2, num_steps=6, batch_size=2, seed=0, sample_shape=(1, 16, 16),
             progress=False)
    assert seen == sampling_timesteps(sched, 6)


def test_model_returning_plain_tensor_is_accepted(unet):
    def plain(x, t):
        return unet(x, t).sample

    torch.testing.assert_close(_gen(plain), _gen(unet))


def test_conditional_unet_with_fixed_context():
    model = build_tiny_cond_unet()
    ehs = torch.zeros(1, 1, model.config.cross_attention_dim)
    x = generate(model, make_scheduler("ddim", SCHED_CFG), num_images=3, num_steps=3, batch_size=2, seed=0,
                 sample_shape=(4, 8, 8), encoder_hidden_states=ehs, progress=False)
    assert x.shape == (3, 4, 8, 8) and torch.isfinite(x).all()


def test_latent_model_is_decoded_through_the_vae():
    class HalfScaleDecoder(torch.nn.Module):  # stands in for a VQModel/AutoencoderKL
        def decode(self, z):
            class Out:
                sample = torch.nn.functional.interpolate(z[:, :1], scale_factor=2)

            return Out()

    model = build_tiny_cond_unet()
    ehs = torch.zeros(1, 1, model.config.cross_attention_dim)
    x = generate(model, make_scheduler("ddim", SCHED_CFG), num_images=2, num_steps=2, batch_size=2, seed=0,
                 sample_shape=(4, 8, 8), vae=HalfScaleDecoder(), latent_scale=0.5, encoder_hidden_states=ehs,
                 progress=False)
    assert x.shape == (2, 1, 16, 16)


def test_model_runs_in_eval_mode_without_grad_and_mode_is_restored():
    inner = build_tiny_unet()
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x, t):
            seen.append((self.training, self.inner.training, torch.is_grad_enabled()))
            return self.inner(x, t)

    spy = Spy().train()
    _gen(spy, steps=2)
    assert seen and all(s == (False, False, False) for s in seen)
    assert spy.training and inner.training  # restored


def test_unknown_sampler_is_a_user_error_listing_choices():
    with pytest.raises(UserError, match="unknown sampler 'heun'.*ddim.*ddpm.*dpm\\+\\+.*euler"):
        make_scheduler("heun", SCHED_CFG)


def test_bad_counts_are_user_errors(unet):
    with pytest.raises(UserError, match="num_steps"):
        _gen(unet, steps=0)
    with pytest.raises(UserError, match="batch_size"):
        _gen(unet, bs=0)


def test_dpmpp_is_dpmsolver_plus_plus_built_from_training_config():
    s = make_scheduler("DPM++", SCHED_CFG)
    assert type(s).__name__ == "DPMSolverMultistepScheduler"
    assert s.config.algorithm_type == "dpmsolver++"
    assert s.config.beta_schedule == "squaredcos_cap_v2"
    assert make_scheduler("ddim", SCHED_CFG).config.num_train_timesteps == 1000


def test_save_grid_writes_an_upscaled_png(tmp_path):
    from PIL import Image

    x = torch.linspace(-1, 1, 6 * 16 * 16).reshape(6, 1, 16, 16)
    p = save_grid(x, tmp_path / "sub" / "g.png", nrow=3)
    img = Image.open(p)
    # 3 columns x 2 rows of 64 px tiles (4x nearest), 2 px padding
    assert img.size == (3 * 64 + 4 * 2, 2 * 64 + 3 * 2)
    assert img.mode == "L"
    rgb = save_grid(torch.zeros(2, 3, 16, 16), tmp_path / "rgb.png")
    assert Image.open(rgb).mode == "RGB"
    with pytest.raises(ValueError, match="expected images"):
        save_grid(torch.zeros(2, 4, 16, 16), tmp_path / "bad.png")
