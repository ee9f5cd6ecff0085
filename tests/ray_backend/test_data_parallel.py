"""One expert across several workers (``experts.data_parallel_workers``): torch.distributed with the
gloo backend in Ray actors, 2 workers vs 1 at the same global batch give the same loss curve and
weights within float rounding, and 1 worker is the sequential path bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

ray = pytest.importorskip("ray")

from experts.data_parallel import check_data_parallel  # noqa: E402
from experts.intervals import Intervals  # noqa: E402
from experts.train_loop import ExpertTrainSettings  # noqa: E402
from experts.training import train_experts  # noqa: E402
from nas.config import SearchConfig, load_config  # noqa: E402
from nas.errors import UserError  # noqa: E402
from nas.experts_stage import expert_runner  # noqa: E402
from nas.ray_backend._ddp import run_expert_jobs_data_parallel  # noqa: E402
from nas.ray_backend._expert_tasks import ExpertTaskResources  # noqa: E402
from nas.run import stage_key  # noqa: E402
from tests.conftest import build_tiny_unet  # noqa: E402

IV = Intervals(1000, (400,))
SCHED = dict(DDPMScheduler().config)
SETTINGS = ExpertTrainSettings(steps=5, batch_size=4, learning_rate=1e-3, random_archs=1, checkpoint_every=2, seed=0)


def _images(n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _losses(out: Path, k: int) -> list[dict]:
    return json.loads((out / "checkpoints" / f"expert_{k}" / "state.json").read_text())["losses"]


def _weights(out: Path, k: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"expert_{k}" / "diffusion_pytorch_model.safetensors"))


def _data_parallel(workers: int):
    return lambda jobs: run_expert_jobs_data_parallel(jobs, SearchConfig(num_cpus=2), ExpertTaskResources(cpus=1),
                                                      workers=workers)


@pytest.mark.slow  # ~50 s on 2 loaded cores: four Ray actor groups
@pytest.mark.ray
def test_two_gloo_workers_follow_the_loss_curve_of_one_at_the_same_global_batch(tmp_path, local_ray):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the sequential reference uses one thread, like each worker
    try:
        base = build_tiny_unet()
        seq = train_experts(base, IV, _images(), SETTINGS, tmp_path / "seq", scheduler_config=SCHED, progress=False)
    finally:
        torch.set_num_threads(before)
    one = train_experts(base, IV, _images(), SETTINGS, tmp_path / "one", scheduler_config=SCHED, progress=False,
                        run_jobs=_data_parallel(1))
    # the experts stage's runner for experts.data_parallel_workers=2 (on the Ray initialised above)
    cfg = load_config(None, ["experts.data_parallel_workers=2", "experts.cpus_per_task=1", "search.num_cpus=2"])
    two = train_experts(base, IV, _images(), SETTINGS, tmp_path / "two", scheduler_config=SCHED, progress=False,
                        run_jobs=expert_runner(cfg))
    assert [r.steps for r in two.experts] == [5, 5]
    for k in range(2):
        ref, curve = _losses(tmp_path / "seq", k), _losses(tmp_path / "two", k)
        assert [r["step"] for r in curve] == [1, 2, 3, 4, 5]
        for a, b in zip(ref, curve):
            assert a.keys() == b.keys()
            for key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=2e-6), (k, a["step"], key)
        w_ref, w_two = _weights(tmp_path / "seq", k), _weights(tmp_path / "two", k)
        assert w_ref.keys() == w_two.keys()
        for name in w_ref:
            # Adam normalises each element's step, so where a gradient is near zero a rounding
            # difference of the all-reduced mean can move the weight by a visible fraction of one
            # step (lr 1e-3; measured: 1 of 2,304 elements of a conv weight off by 3.0e-5): a
            # tenth of one step is the tolerance
            torch.testing.assert_close(w_two[name], w_ref[name], rtol=1e-4, atol=0.1 * SETTINGS.learning_rate)
        # one worker is the sequential loop itself: the same weights and losses, bit for bit
        assert _losses(tmp_path / "one", k) == ref
        w_one = _weights(tmp_path / "one", k)
        assert all(torch.equal(w_one[name], w_ref[name]) for name in w_ref)
    # the losses moved: training happened, and the check above compared real curves
    assert _losses(tmp_path / "seq", 0)[0]["loss"] != _losses(tmp_path / "seq", 0)[-1]["loss"]
    ranks = json.loads((tmp_path / "two" / "ray_jobs.json").read_text())["jobs"]
    assert sorted((r["k"], r["rank"]) for r in ranks) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {r["backend"] for r in ranks} == {"gloo"} and len({r["pid"] for r in ranks if r["k"] == 0}) == 2
    assert [r.final_loss for r in two.experts] == pytest.approx([r.final_loss for r in seq.experts], rel=1e-4)


def test_the_global_batch_must_split_evenly_over_the_workers():
    check_data_parallel(4, 2)
    with pytest.raises(UserError, match="experts.batch_size=6 .* multiple of experts.data_parallel_workers=4"):
        check_data_parallel(6, 4)


def test_data_parallel_workers_leaves_every_stage_key_unchanged():
    plain = load_config(preset="demo")
    dp = load_config(preset="demo", overrides=["experts.data_parallel_workers=2"])
    assert dp.experts.data_parallel_workers == 2
    for stage in ("intervals", "experts", "search"):
        assert stage_key(plain, stage) == stage_key(dp, stage), stage
