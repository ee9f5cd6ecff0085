"""The router stage of ``diffnas run --address``: the agent trains in a Ray task on the cluster, the
task's node/host/device recorded in ``router/ray_job.json``, the allocations those of the driver."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from benchmarks.cluster_jobs import collect_jobs  # noqa: E402
from experts.allocation import Allocation  # noqa: E402
from experts.intervals import Intervals  # noqa: E402
from nas.cli import main  # noqa: E402
from nas.config import load_config  # noqa: E402
from nas.pipeline import METHOD_STAGES  # noqa: E402
from nas.routing import ROUTER_JOB_FILE, route  # noqa: E402
from nas.run import RunContext, RunDir  # noqa: E402
from tests.conftest import build_tiny_unet  # noqa: E402

IV = Intervals(1000, (400,))
_MiB = 1024 * 1024


def _overrides(root, name):
    folder = root / "tiny-unet"
    if not folder.exists():
        build_tiny_unet().save_pretrained(folder, safe_serialization=True)
    return [f"run_root={root / 'runs'}", f"name={name}", "device=cpu", f"model.base={folder}", "data.limit=64",
            "sampling.num_steps=4", "experts.train_steps=0", "experts.batch_size=4", "experts.heldout_per_interval=8",
            "router.steps=4", "router.budgets_per_step=1", "router.batch_size=4", "router.budgets=[0.5, 0.8]"]


@pytest.mark.slow  # a two-node Ray cluster: ~30-60 s on 2 cores
def test_the_router_stage_trains_in_a_ray_task_on_the_named_cluster_with_the_drivers_allocations(tmp_path):
    over = _overrides(tmp_path, "driver")
    IV.save(RunDir(tmp_path / "runs", "driver").intervals_path)
    assert main(["train-experts", *[a for o in over for a in ("--set", o)], "-q"]) == 0
    # the same experts in a second run folder: one routed in the driver, one on the cluster
    shutil.copytree(tmp_path / "runs" / "driver", tmp_path / "runs" / "cluster")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the Ray task runs with 1 thread (search.cpus_per_trial): the same float sums
    try:
        route(RunContext(load_config(None, over), device="cpu", progress=False))
    finally:
        torch.set_num_threads(threads)

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * _MiB})
    cluster.add_node(num_cpus=1, object_store_memory=80 * _MiB)
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        cfg = load_config(None, [*_overrides(tmp_path, "cluster"), f"search.address={cluster.address}"])
        ctx = RunContext(cfg, device="cpu", progress=False)
        stage = next(s for s in METHOD_STAGES if s.name == "router")
        detail = stage.run(ctx)
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
        cluster.shutdown()

    job = json.loads((ctx.run.router_dir / ROUTER_JOB_FILE).read_text())
    assert job["node"] in alive and job["device"] == "cpu" and job["torch_threads"] == 1
    assert job["up_to_date"] is False and job["task_wall_s"] > 0 and "Ray task on" in detail
    for b in (0.5, 0.8):
        on_cluster = Allocation.load(ctx.run.allocations_dir / f"router-{b:g}.json")
        in_driver = Allocation.load(RunDir(tmp_path / "runs", "driver").allocations_dir / f"router-{b:g}.json")
        assert on_cluster.archs == in_driver.archs and on_cluster.feasible
    assert str(tmp_path) not in (ctx.run.router_dir / ROUTER_JOB_FILE).read_text()
    listed = [j for j in collect_jobs(ctx.run.path) if j.stage == "router"]  # benchmarks/cluster_jobs.py
    assert [(j.node, j.device) for j in listed] == [(job["node"], "cpu")]
    assert dataclasses.asdict(cfg.router) == dataclasses.asdict(load_config(None, over).router)
