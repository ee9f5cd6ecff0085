"""``diffnas evaluate --model DIR`` samples a mixture along its own step schedule."""

from __future__ import annotations

from diffusers import DDPMScheduler

from experts.allocation import Allocation
from experts.intervals import Intervals
from experts.mixture import MixtureOfExperts
from experts.schedule import StepSchedule
from nas.cli import main
from nas.run import RunDir
from search_spaces import ElasticUNet
from tests.conftest import build_tiny_unet

IV = Intervals(1000, (400,))


def _scheduled_mixture(folder) -> tuple[MixtureOfExperts, StepSchedule]:
    net = ElasticUNet(build_tiny_unet())
    archs = (net.space.smallest(), net.space.full())
    macs = tuple(net.space.macs(a) for a in archs)
    schedule = StepSchedule.from_counts(IV, (1, 3), "uniform")
    alloc = Allocation("router", 0.5, IV, archs, macs, schedule.steps_per_interval, 10 * net.space.total_macs,
                       schedule=schedule)
    mix = MixtureOfExperts.from_allocation(alloc, [net, net])
    mix.save_pretrained(folder)
    return mix, schedule


def test_evaluate_model_samples_a_mixture_along_its_schedule(tmp_path):
    base = tmp_path / "tiny-unet"
    build_tiny_unet().save_pretrained(base, safe_serialization=True)
    DDPMScheduler().save_pretrained(base)
    folder = tmp_path / "mixture"
    mix, schedule = _scheduled_mixture(folder)
    runs = tmp_path / "runs"
    common = ["--set", f"run_root={runs}", "--name", "x", "--device", "cpu", "--set", f"model.base={base}",
              "--set", "data.limit=64", "--set", "sampling.num_steps=10", "--set", "sampling.batch_size=8", "-q"]
    assert main(["evaluate", *common, "--model", str(folder), "--set", "evaluation.num_samples=8",
                 "--set", "evaluation.latency_batch_size=2", "--set", "evaluation.latency_repeats=1"]) == 0
    rec = RunDir(runs, "x").read_results()[-1]
    ts = schedule.timesteps()
    assert rec["num_steps"] == len(ts) == 4  # the schedule's, not sampling.num_steps
    assert rec["macs_per_trajectory"] == mix.trajectory_macs(ts)
    assert rec["macs_per_trajectory"] != mix.trajectory_macs(list(range(900, -1, -100)))
