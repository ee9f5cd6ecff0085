"""One expert across several GPUs: data-parallel training as a group of Ray actors.

:func:`run_expert_job_data_parallel` reserves ``workers`` bundles of ``experts.cpus_per_task`` CPUs
and ``experts.gpus_per_task`` GPUs in one placement group (packed onto as few nodes as fit),
starts one actor per bundle, joins them in a ``torch.distributed`` process group (``nccl`` when the
workers have CUDA, ``gloo`` otherwise; rendezvous at rank 0's node address and a free port there)
and has every worker call :func:`experts.data_parallel.train_expert_data_parallel`: each trains on
its shard of the global batch (``experts.batch_size``), gradients averaged by all-reduce, rank 0
checkpointing to the run folder. A group whose actor or node dies is started again (up to
``experts.max_retries`` times) and resumes from the last checkpoint.

:func:`run_expert_jobs_data_parallel` trains the jobs of an experts folder one after another, each
across the group, and records where each rank ran in ``<experts>/ray_jobs.json``.

Example (a local Ray with two CPUs, one expert on two workers)::

    >>> res = run_expert_jobs_data_parallel(jobs, SearchConfig(num_cpus=2), ExpertTaskResources(cpus=1),
    ...                                     workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from nas.config import SearchConfig
from nas.errors import UserError
from nas.ray_backend._cluster import alive_nodes, ray_cluster, trial_device
from nas.ray_backend._expert_tasks import ExpertTaskResources, _write_jobs_file, expert_task_resources

__all__ = ["run_expert_job_data_parallel", "run_expert_jobs_data_parallel"]

log = logging.getLogger(__name__)

#: Seconds to wait for the cluster to place every worker of a group.
PLACEMENT_TIMEOUT_S = 120.0


class _Worker:
    """One rank of a data-parallel group (a Ray actor)."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.device = trial_device(ray.get_gpu_ids())

    def rendezvous(self) -> tuple[str, int]:
        """This node's address and a free port on it (rank 0's: where the group meets)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def train(self, job: Any, rank: int, world: int, master: tuple[str, int]) -> dict[str, Any]:
        import torch.distributed as dist

        from experts.data_parallel import train_expert_data_parallel

        backend = "nccl" if str(self.device).startswith("cuda") else "gloo"
        t0 = time.perf_counter()
        if world > 1:
            dist.init_process_group(backend, init_method=f"tcp://{master[0]}:{master[1]}", rank=rank,
                                    world_size=world, timeout=datetime.timedelta(minutes=10))
        try:
            res = train_expert_data_parallel(job, rank, world, device=self.device)
        finally:
            if world > 1 and dist.is_initialized():
                dist.destroy_process_group()
        return {"result": res, "rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "pid": os.getpid(), "device": str(self.device), "backend": backend,
                "task_wall_s": round(time.perf_counter() - t0, 3)}


def _run_group(job_ref: Any, k: int, workers: int, need: dict[str, float], threads: int) -> list[dict[str, Any]]:
    """One attempt: a placement group of ``workers`` bundles, one actor each, all training expert ``k``."""
    bundle = {"CPU": need["cpu"], **({"GPU": need["gpu"]} if need["gpu"] > 0 else {})}
    pg = placement_group([dict(bundle) for _ in range(workers)], strategy="PACK", name=f"diffnas-ddp-expert-{k}")
    actors: list[Any] = []
    try:
        ready, _ = ray.wait([pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise UserError(
                f"expert {k}: the Ray cluster cannot place {workers} data-parallel workers of {need['cpu']:g} CPU(s) and "
                f"{need['gpu']:g} GPU(s) each within {PLACEMENT_TIMEOUT_S:g} s; lower experts.data_parallel_workers "
                "or experts.cpus_per_task / experts.gpus_per_task, or add nodes")
        cls = ray.remote(_Worker)
        for rank in range(workers):
            actors.append(cls.options(
                num_cpus=need["cpu"], num_gpus=need["gpu"], name=None, max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
            ).remote(threads))
        master = ray.get(actors[0].rendezvous.remote())
        return ray.get([a.train.remote(job_ref, rank, workers, master) for rank, a in enumerate(actors)])
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        with contextlib.suppress(Exception):
            remove_placement_group(pg)


def run_expert_job_data_parallel(job: Any, workers: int, resources: ExpertTaskResources = ExpertTaskResources()
                                 ) -> tuple[Any, list[dict[str, Any]]]:
    """Train one :class:`experts.training.ExpertJob` across ``workers`` Ray actors (Ray initialised).

    Returns:
        rank 0's :class:`experts.training.ExpertResult` and one record per rank (node, device, backend).

    Raises:
        UserError: the batch does not split over the workers, no node can hold a worker, the group
            cannot be placed, or training failed (its error, in one line).
    """
    from experts.data_parallel import check_data_parallel

    check_data_parallel(job.settings.batch_size, workers)
    need = expert_task_resources(resources, alive_nodes())
    threads = max(1, int(need["cpu"]))
    job_ref = ray.put(job)
    log.info("expert %d: data-parallel over %d workers (%g CPU, %g GPU each)", job.k, workers, need["cpu"], need["gpu"])
    for attempt in range(resources.max_retries + 1):
        try:
            records = _run_group(job_ref, job.k, workers, need, threads)
            return records[0]["result"], [{key: v for key, v in r.items() if key != "result"} for r in records]
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            if isinstance(cause, UserError):
                raise UserError(f"expert {job.k}: {cause}") from None
            text = " ".join(str(cause).split())[-400:]
            raise UserError(f"expert {job.k} failed in its data-parallel group: {type(cause).__name__}: {text}") from None
        except (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError) as err:
            if attempt == resources.max_retries:
                raise UserError(
                    f"expert {job.k}: a data-parallel worker died {attempt + 1} time(s) ({type(err).__name__}); raise "
                    "experts.max_retries, or rerun to resume from its checkpoint") from None
            log.warning("expert %d: a data-parallel worker died (%s); restarting the group from the last checkpoint",
                        job.k, type(err).__name__)
    raise AssertionError("unreachable")  # pragma: no cover


def run_expert_jobs_data_parallel(jobs: Sequence[Any], cluster: SearchConfig,
                                  resources: ExpertTaskResources = ExpertTaskResources(), *, workers: int = 2
                                  ) -> list[Any]:
    """Train ``jobs`` one after another, each across ``workers`` data-parallel Ray actors; results
    in the order of ``jobs``; where each rank ran goes to ``<experts>/ray_jobs.json``."""
    if not jobs:
        return []
    out_dirs = {Path(j.out_dir) for j in jobs}
    if len(out_dirs) != 1:
        raise ValueError("run_expert_jobs_data_parallel: all jobs must belong to one experts folder")
    results, records = [], []
    with ray_cluster(cluster):
        for job in jobs:
            res, ranks = run_expert_job_data_parallel(job, workers, resources)
            results.append(res)
            records += [{"k": job.k, "data_parallel_workers": workers, **r} for r in ranks]
    _write_jobs_file(out_dirs.pop(), records)
    return results
