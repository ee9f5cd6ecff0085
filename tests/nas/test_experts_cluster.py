"""The interval experts as Ray tasks on a three-node cluster (``ray.cluster_utils.Cluster``, one
logical GPU per node, no CUDA): the three experts train at once, one per node and GPU; a node
removed while it trains an expert leaves the stage to finish, the expert retried on another node
from its last checkpoint, with the weights of an uninterrupted sequential run, bit for bit.

"At once" is shown without timing: after its first step each task writes a marker and waits
(bounded) until all three markers exist, a barrier only concurrent tasks can pass. The node is
removed at a known step: the first task on a worker node to reach that step (its checkpoint
written) writes a "ready" marker naming its node and blocks; the test then removes that node.
The hook is :class:`experts.training.ExpertJob`'s ``on_step``, a module-level class here so the
Ray workers can unpickle it (they import this module from the driver's working directory).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from experts.intervals import Intervals  # noqa: E402
from experts.train_loop import ExpertTrainSettings  # noqa: E402
from experts.training import ExpertJob, ExpertResult, train_experts  # noqa: E402
from nas.config import SearchConfig  # noqa: E402
from nas.ray_backend import ExpertTaskResources, run_expert_jobs_ray  # noqa: E402
from tests.conftest import build_tiny_unet  # noqa: E402

pytestmark = pytest.mark.ray

IV = Intervals(1000, (300, 600))  # three experts
SCHED = dict(DDPMScheduler().config)
NODES = 3
_MiB = 2**20
WAIT_S = 120.0  # bound on every wait of the hook and the test (a failure, never a pass)


def _images(n: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1


def _settings(steps: int, seed: int = 0) -> ExpertTrainSettings:
    return ExpertTrainSettings(steps=steps, batch_size=4, learning_rate=1e-3, random_archs=1, checkpoint_every=1,
                               seed=seed)


@dataclass(frozen=True)
class StepHook:
    """``on_step`` of the experts' jobs: a barrier after step 1 and/or one task blocked at a step.

    Attributes:
        folder: marker folder (seen by every node: this machine's disk).
        barrier: tasks that must all have finished step 1 before any goes on (0: no barrier).
        block_step: the first task on a node other than ``head_node`` to reach this step writes
            ``ready.json`` (its ``k`` and node) and blocks until its node is removed (0: none).
        head_node: the head node's id (the driver's node, which the test cannot remove).
        wait_s: bound on each wait; past it the task fails with a one-line reason.
    """

    folder: str
    barrier: int = 0
    block_step: int = 0
    head_node: str = ""
    wait_s: float = WAIT_S

    def __call__(self, k: int, step: int) -> None:
        folder = Path(self.folder)
        if self.barrier and step == 1:
            _write(folder / f"started_{k}.json", {"k": k, "node_id": ray.get_runtime_context().get_node_id()})
            deadline = time.monotonic() + self.wait_s
            while (n := len(list(folder.glob("started_*.json")))) < self.barrier:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"expert {k}: only {n} of {self.barrier} expert tasks reached step 1 "
                                       f"within {self.wait_s:g} s: the tasks did not train at once")
                time.sleep(0.05)
        if self.block_step and step == self.block_step:
            node = ray.get_runtime_context().get_node_id()
            if node == self.head_node:
                return
            try:  # one task only, and on its first attempt only (a retry resumes past this step)
                os.close(os.open(folder / "claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            _write(folder / "ready.json", {"k": k, "node_id": node, "step": step})
            time.sleep(self.wait_s)  # the node's removal ends this process
            raise TimeoutError(f"expert {k}: blocked at step {step} but its node was not removed "
                               f"within {self.wait_s:g} s")


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _runner(hook: StepHook, max_retries: int = 3):
    """``run_jobs`` of :func:`train_experts`: the jobs with ``hook`` as Ray tasks (1 CPU, 1 GPU each)."""

    def run(jobs: Sequence[ExpertJob]) -> Sequence[ExpertResult]:
        jobs = [dataclasses.replace(job, on_step=hook) for job in jobs]
        return run_expert_jobs_ray(jobs, SearchConfig(), ExpertTaskResources(cpus=1, gpus=1, max_retries=max_retries))

    return run


def _files(out: Path, k: int) -> bytes:
    return (out / f"expert_{k}" / "diffusion_pytorch_model.safetensors").read_bytes()


def _losses(out: Path, k: int) -> list[dict]:
    return json.loads((out / "checkpoints" / f"expert_{k}" / "state.json").read_text())["losses"]


def _jobs(out: Path) -> list[dict]:
    return json.loads((out / "ray_jobs.json").read_text())["jobs"]


def _start_cluster(nodes: int) -> Cluster:
    """``nodes`` Ray nodes on this machine, each 1 CPU and 1 logical GPU; the driver joins the head."""
    if ray.is_initialized():
        ray.shutdown()
    args = {"num_cpus": 1, "num_gpus": 1, "object_store_memory": 80 * _MiB}
    cluster = Cluster(initialize_head=True, head_node_args=dict(args))
    for _ in range(nodes - 1):
        cluster.add_node(**args)
    ray.init(address=cluster.address, logging_level="WARNING")
    cluster.wait_for_nodes()
    return cluster


def _remove_node_when_ready(cluster: Cluster, folder: Path, removed: list[dict]) -> None:
    """Wait for ``ready.json``, then remove (hard-kill) the node it names."""
    ready = folder / "ready.json"
    deadline = time.monotonic() + WAIT_S
    while not ready.is_file():
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    node = next(n for n in cluster.worker_nodes if n.node_id == info["node_id"])
    cluster.remove_node(node, allow_graceful=False)
    removed.append(info)


@pytest.mark.slow  # a three-node Ray cluster and two short expert stages: ~60-90 s on 2 busy cores
def test_three_experts_train_at_once_one_per_node_and_survive_a_removed_node(tmp_path):
    steps, block_step = 8, 4
    base = build_tiny_unet()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tasks train with experts.cpus_per_task = 1 thread: the same float sums
    try:
        seq = train_experts(base, IV, _images(), _settings(steps), tmp_path / "seq", scheduler_config=SCHED,
                            progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [r.steps for r in seq.experts] == [steps] * NODES

    cluster = _start_cluster(NODES)
    try:
        head = cluster.head_node.node_id
        # 1. the three experts train at once (the barrier), one per node and logical GPU
        (tmp_path / "m_once").mkdir()
        once = train_experts(base, IV, _images(), _settings(2), tmp_path / "once", scheduler_config=SCHED,
                             progress=False, run_jobs=_runner(StepHook(str(tmp_path / "m_once"), barrier=NODES)))
        assert [r.steps for r in once.experts] == [2] * NODES
        # 2. a node removed while its task blocks at step ``block_step``; the stage still finishes
        (tmp_path / "m_kill").mkdir()
        removed: list[dict] = []
        watcher = threading.Thread(target=_remove_node_when_ready, args=(cluster, tmp_path / "m_kill", removed),
                                   daemon=True)
        watcher.start()
        hook = StepHook(str(tmp_path / "m_kill"), barrier=NODES, block_step=block_step, head_node=head)
        par = train_experts(base, IV, _images(), _settings(steps), tmp_path / "par", scheduler_config=SCHED,
                            progress=False, run_jobs=_runner(hook))
        watcher.join(timeout=5)
        remaining = {head} | {n.node_id for n in cluster.worker_nodes}  # Ray's own view of a death lags
    finally:
        ray.shutdown()
        cluster.shutdown()

    jobs = _jobs(tmp_path / "once")
    assert [j["k"] for j in jobs] == list(range(NODES))
    assert len({j["node_id"] for j in jobs}) == NODES, f"not one expert per node: {jobs}"
    assert all(len(j["gpu_ids"]) == 1 and j["device"] == "cpu" for j in jobs)  # logical GPUs, no CUDA here
    assert len({(j["node_id"], j["gpu_ids"][0]) for j in jobs}) == NODES  # never two tasks on one GPU
    assert all(j["torch_threads"] == 1 and j["resumed_from_step"] == 0 for j in jobs)

    assert removed, "no task reported it was ready to have its node removed"
    k = removed[0]["k"]
    assert removed[0]["node_id"] != head and removed[0]["node_id"] not in remaining and len(remaining) == NODES - 1
    jobs = _jobs(tmp_path / "par")
    assert [r.steps for r in par.experts] == [steps] * NODES
    assert jobs[k]["resumed_from_step"] == block_step  # retried, from the checkpoint of the blocked step
    assert jobs[k]["node_id"] in remaining  # retried on a node still there
    assert all(j["resumed_from_step"] == 0 for j in jobs if j["k"] != k)
    for e in range(NODES):
        assert _files(tmp_path / "seq", e) == _files(tmp_path / "par", e), f"expert {e} differs from the sequential run"
        assert _losses(tmp_path / "seq", e) == _losses(tmp_path / "par", e)
