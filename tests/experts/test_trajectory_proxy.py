"""The trajectory proxy sees both errors: fewer steps and pruned experts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from experts.intervals import Intervals
from experts.mixture import MixtureOfExperts
from experts.schedule import StepSchedule
from experts.trajectory_proxy import TrajectoryProxy
from nas.sampling import generate, make_scheduler
from search_spaces import ElasticUNet
from tests.conftest import build_tiny_unet

SCHED_CFG = dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").config)
IV3 = Intervals(1000, (300, 700))
N = 8


def _sample(model, timesteps):
    return generate(model, make_scheduler("ddim", SCHED_CFG), num_images=N, timesteps=timesteps, batch_size=N,
                    seed=0, sample_shape=(1, 16, 16), progress=False)


def _features(images: torch.Tensor) -> np.ndarray:  # a stand-in for the evaluation extractor
    return F.avg_pool2d(images, 4).flatten(1).numpy()  # (N, 16)


def _uniform(n: int) -> list[int]:
    return StepSchedule.from_uniform(IV3, n, scheduler_config=SCHED_CFG).timesteps()


class GaussianDenoiser(torch.nn.Module):
    """The exact noise predictor for data ~ N(pattern, 0.3^2 I): a smooth probability-flow ODE,
    so the discretisation error of fewer steps shows cleanly (a random UNet is no denoiser)."""

    def __init__(self) -> None:
        super().__init__()
        self.pattern = torch.linspace(-0.8, 0.8, 256).reshape(1, 1, 16, 16)
        self.alphas = DDPMScheduler.from_config(SCHED_CFG).alphas_cumprod

    def forward(self, x, t):
        a = self.alphas[int(t)]
        return (1 - a) ** 0.5 * (x - a ** 0.5 * self.pattern) / (a * 0.09 + 1 - a)


@pytest.fixture(scope="module")
def base():
    return build_tiny_unet()


@pytest.fixture(scope="module")
def gaussian_proxy():
    return TrajectoryProxy(_sample, GaussianDenoiser(), _uniform(50), _features)


@pytest.fixture(scope="module")
def proxy(base):
    return TrajectoryProxy(_sample, base, _uniform(50), _features)


def test_the_base_at_the_reference_schedule_scores_zero(proxy, base):
    s = proxy.score(base, _uniform(50))
    assert s.distance == 0.0 and s.raw_distance == 0.0
    assert s.unet_calls == N * 50 and s.num_images == N and s.num_steps == 50


def test_the_distance_grows_as_steps_are_removed(gaussian_proxy, proxy, base):
    model = gaussian_proxy.base
    assert gaussian_proxy.score(model, _uniform(50)).distance == 0.0
    d = {n: gaussian_proxy.score(model, _uniform(n)).distance for n in (25, 10, 4, 2)}
    assert 0 < d[25] < d[10] < d[4] < d[2]
    # on the random tiny UNet too, any step removed is seen
    assert all(proxy.score(base, _uniform(n)).distance > 0 for n in (25, 2))


def test_the_distance_sees_a_pruned_expert_at_full_steps(proxy, base):
    net = ElasticUNet(base, importance="none")
    full = MixtureOfExperts(IV3, [net] * 3, [net.space.full()] * 3)
    assert proxy.score(full, _uniform(50)).distance == 0.0
    low_pruned = MixtureOfExperts(IV3, [net] * 3, [net.space.smallest(), net.space.full(), net.space.full()])
    all_pruned = MixtureOfExperts(IV3, [net] * 3, [net.space.smallest()] * 3)
    d_low, d_all = proxy.score(low_pruned, _uniform(50)).distance, proxy.score(all_pruned, _uniform(50)).distance
    assert 0 < d_low < d_all


def test_placement_changes_the_score(proxy, base):
    leading = StepSchedule.from_counts(IV3, (2, 1, 1), "leading")
    trailing = StepSchedule.from_counts(IV3, (2, 1, 1), "trailing")
    a, b = proxy.score(base, leading), proxy.score(base, trailing)
    assert a.distance > 0 and b.distance > 0 and a.distance != b.distance
    assert proxy.cost(leading) == N * 4 == a.unet_calls


def test_reference_is_cached_in_memory_and_on_disk(base, tmp_path):
    calls = []

    def counting(model, ts):
        calls.append(len(ts))
        return _sample(model, ts)

    fid_seen = []
    p = TrajectoryProxy(counting, base, _uniform(20), _features, cache_file=tmp_path / "ref.pt", cache_key="tiny-0",
                        fid=lambda f: fid_seen.append(f.shape) or 1.5)
    first = p.score(base, _uniform(5))
    p.score(base, _uniform(4))
    assert calls == [20, 5, 4]  # the reference sampled once
    assert first.fid == 1.5 and fid_seen[0] == (N, 16)
    again = TrajectoryProxy(counting, base, _uniform(20), _features, cache_file=tmp_path / "ref.pt", cache_key="tiny-0")
    assert again.score(base, _uniform(5)).distance == first.distance
    assert calls == [20, 5, 4, 5]  # loaded from disk: no reference sampling
    other = TrajectoryProxy(counting, base, _uniform(20), _features, cache_file=tmp_path / "ref.pt", cache_key="other")
    torch.testing.assert_close(other.reference_samples, again.reference_samples)
    assert calls == [20, 5, 4, 5, 20]  # another key: sampled anew


def test_a_sampler_giving_another_batch_size_is_refused(base):
    p = TrajectoryProxy(_sample, base, _uniform(4), _features)
    p.reference_samples  # noqa: B018 (computes the reference)
    p.sample = lambda m, ts: _sample(m, ts)[:3]
    with pytest.raises(ValueError, match="gave 3 images, the reference has 8"):
        p.score(base, _uniform(2))
