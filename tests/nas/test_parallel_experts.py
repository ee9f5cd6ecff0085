"""The interval experts as Ray tasks (``experts.parallel``): the same weights as the sequential
path, bit for bit on the CPU, and a task whose worker is killed mid-training is retried and
resumes from its checkpoint to the same weights."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

ray = pytest.importorskip("ray")

from experts.intervals import Intervals  # noqa: E402
from experts.train_loop import ExpertTrainSettings  # noqa: E402
from experts.training import train_experts  # noqa: E402
from nas.config import SearchConfig, load_config  # noqa: E402
from nas.errors import UserError  # noqa: E402
from nas.experts_stage import expert_runner  # noqa: E402
from nas.ray_backend import ExpertTaskResources, run_expert_jobs_ray  # noqa: E402
from tests.conftest import build_tiny_unet  # noqa: E402

IV = Intervals(1000, (400,))
SCHED = dict(DDPMScheduler().config)
TASK_NAME = "diffnas-expert"  # Ray titles a busy worker process ``ray::<task name>``


def _images(n: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1


def _settings(steps: int) -> ExpertTrainSettings:
    return ExpertTrainSettings(steps=steps, batch_size=4, learning_rate=1e-3, random_archs=1, checkpoint_every=1,
                               seed=0)


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module (``run_expert_jobs_ray`` uses an initialised Ray as it is)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the tasks use experts.cpus_per_task = 1 thread each
    yield
    torch.set_num_threads(before)


def _ray_runner(**kw):
    return lambda jobs: run_expert_jobs_ray(jobs, SearchConfig(num_cpus=2), ExpertTaskResources(cpus=1, **kw))


def _files(out: Path, k: int) -> bytes:
    return (out / f"expert_{k}" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_parallel_experts_equal_the_sequential_ones_bitwise(tmp_path, local_ray, one_thread):
    base = build_tiny_unet()
    seq = train_experts(base, IV, _images(), _settings(4), tmp_path / "seq", scheduler_config=SCHED, progress=False)
    par = train_experts(base, IV, _images(), _settings(4), tmp_path / "par", scheduler_config=SCHED, progress=False,
                        run_jobs=_ray_runner())
    assert [r.k for r in par.experts] == [0, 1] and [r.steps for r in par.experts] == [4, 4]
    for k in range(2):
        assert _files(tmp_path / "seq", k) == _files(tmp_path / "par", k)
        la = json.loads((tmp_path / "seq" / "checkpoints" / f"expert_{k}" / "state.json").read_text())["losses"]
        lb = json.loads((tmp_path / "par" / "checkpoints" / f"expert_{k}" / "state.json").read_text())["losses"]
        assert la == lb
    assert [r.final_loss for r in par.experts] == [r.final_loss for r in seq.experts]
    jobs = json.loads((tmp_path / "par" / "ray_jobs.json").read_text())["jobs"]
    assert [j["k"] for j in jobs] == [0, 1]
    assert all(j["device"] == "cpu" and j["torch_threads"] == 1 and j["resumed_from_step"] == 0 for j in jobs)
    assert all(j["pid"] != os.getpid() for j in jobs)  # trained in Ray workers, not in the driver
    # a rerun reuses the finished experts (their files are not rewritten)
    stamp = (tmp_path / "par" / "expert_0" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    train_experts(base, IV, _images(), _settings(4), tmp_path / "par", scheduler_config=SCHED, progress=False,
                  run_jobs=_ray_runner())
    assert (tmp_path / "par" / "expert_0" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp


def _task_pids() -> list[int]:
    me, out = os.getuid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != me:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::" + TASK_NAME):
            out.append(int(entry.name))
    return out


def test_a_killed_expert_task_is_retried_and_resumes_to_the_same_weights(tmp_path, local_ray, one_thread):
    import threading

    steps = 40
    base = build_tiny_unet()
    seq = tmp_path / "seq"
    train_experts(base, IV, _images(), _settings(steps), seq, scheduler_config=SCHED, progress=False, only=[0])
    par = tmp_path / "par"
    killed: list[int] = []

    def kill_mid_training() -> None:
        state = par / "checkpoints" / "expert_0" / "state.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                step = json.loads(state.read_text())["step"]
            except (OSError, ValueError, KeyError):
                step = 0
            if 3 <= step < steps - 5:
                pids = _task_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)  # the worker of this test's own task
                    killed.append(step)
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_mid_training, daemon=True)
    watcher.start()
    res = train_experts(base, IV, _images(), _settings(steps), par, scheduler_config=SCHED, progress=False,
                        only=[0], run_jobs=_ray_runner(max_retries=2))
    watcher.join(timeout=5)
    assert killed, "the task finished before the test could kill its worker"
    assert res.experts[0].steps == steps
    job = json.loads((par / "ray_jobs.json").read_text())["jobs"][0]
    assert job["resumed_from_step"] >= killed[0] - 1 > 0  # the retry continued from a checkpoint
    assert _files(seq, 0) == _files(par, 0)
    la = json.loads((seq / "checkpoints" / "expert_0" / "state.json").read_text())["losses"]
    lb = json.loads((par / "checkpoints" / "expert_0" / "state.json").read_text())["losses"]
    assert la == lb


def test_a_task_no_node_can_hold_is_refused_in_one_line(tmp_path, local_ray):
    base = build_tiny_unet()
    with pytest.raises(UserError, match=r"experts.cpus_per_task.*largest node: 2 CPU"):
        train_experts(base, IV, _images(), _settings(1), tmp_path / "e", scheduler_config=SCHED, progress=False,
                      run_jobs=lambda jobs: run_expert_jobs_ray(jobs, SearchConfig(), ExpertTaskResources(cpus=3)))


def test_the_runner_follows_the_config():
    assert expert_runner(load_config(None, [])) is None
    assert callable(expert_runner(load_config(None, ["experts.parallel=true"])))
    with pytest.raises(UserError, match="gpus_per_task"):
        load_config(None, ["experts.gpus_per_task=1.5"])


def test_the_cli_refuses_an_address_without_parallel(tmp_path, capsys):
    from nas.cli import main

    code = main(["train-experts", "--name", "r", "--set", f"run_root={tmp_path}", "--address", "auto"])
    err = capsys.readouterr().err
    assert code != 0 and "--address needs --parallel" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # refused before anything was written
