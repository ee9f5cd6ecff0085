"""experts.sampling_loop: step-noise generators are built only for schedulers that draw step noise,
and a DDIM trajectory is bitwise what it was when they were always passed."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from experts.sampling_loop import TimestepPlan, denoise_batch, draws_step_noise, image_seed, initial_noise


class _Bar:
    def update(self, n: int) -> None:
        pass


def _unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, add_attention=False, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def _always_passing_generators(unet, sched, seed: int, n: int) -> torch.Tensor:
    """The loop as it was: per-image step generators passed to every step."""
    sched.set_timesteps(5)
    x = initial_noise(seed, 0, n, (1, 8, 8)) * sched.init_noise_sigma
    gens = [torch.Generator().manual_seed(image_seed(seed, i, 1)) for i in range(n)]
    for t in sched.timesteps:
        eps = unet(sched.scale_model_input(x, t), t).sample
        x = sched.step(eps, t, x, generator=gens).prev_sample
    return x


def test_ddim_is_deterministic_and_bitwise_unchanged_ddpm_still_draws_per_image_noise():
    unet = _unet()
    assert not draws_step_noise(DDIMScheduler()) and draws_step_noise(DDPMScheduler())
    with torch.no_grad():
        for cls in (DDIMScheduler, DDPMScheduler):
            got = denoise_batch(unet, TimestepPlan(cls(num_train_timesteps=1000), 5, None), 3, 0, 4, (1, 8, 8),
                                torch.device("cpu"), None, _Bar())
            want = _always_passing_generators(unet, cls(num_train_timesteps=1000), 3, 4)
            assert torch.equal(got, want), cls.__name__
        # DDPM's step noise is per image: image 1 of a batch of 2 is image 1 of a batch of 4. Across batch
        # sizes the conv kernels may sum in another order, so this one is to float tolerance, not bitwise; a
        # noise draw shared by the batch instead of per image would move it by O(1).
        two = denoise_batch(unet, TimestepPlan(DDPMScheduler(num_train_timesteps=1000), 5, None), 3, 0, 2, (1, 8, 8),
                            torch.device("cpu"), None, _Bar())
        torch.testing.assert_close(two[1], want[1], rtol=0, atol=1e-4)
        assert (two[1] - want[0]).abs().max() > 0.1
