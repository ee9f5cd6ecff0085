"""The interval experts as Ray tasks: one task per expert, locally or on a cluster.

:func:`run_expert_jobs_ray` submits one task per :class:`experts.training.ExpertJob` (from
:func:`experts.training.prepare_expert_jobs`, which the driver runs first: it writes the shared
supernet, ``intervals.json`` and ``manifest.json``). Each task calls
:func:`experts.training.run_expert_job`, the same entry point as the sequential path, so it trains
from and to the run folder (on shared storage for a cluster) with the expert's own checkpoints in
``<experts>/checkpoints/expert_<k>/``. A task whose worker or node dies is resubmitted by Ray
(``max_retries``) and continues from the expert's last checkpoint; an expert already trained is
reused. Each task uses ``cpus_per_task`` torch threads and the torch device that Ray assigned it
(``cuda`` for a task with a GPU), so on the CPU with the same seeds and thread count the weights
are those of the sequential path, bit for bit.

The driver records where each expert ran (node, GPU ids, host, device, the step it resumed from) in
``<experts>/ray_jobs.json``.

Example (a local Ray with two CPUs, two experts of a tiny UNet)::

    >>> from nas.ray_backend import ExpertTaskResources, run_expert_jobs_ray  # doctest: +SKIP
    >>> jobs = prepare_expert_jobs(unet, intervals, images, settings, "runs/r/experts",
    ...                            scheduler_config=sched)  # doctest: +SKIP
    >>> res = run_expert_jobs_ray(jobs, SearchConfig(num_cpus=2), ExpertTaskResources(cpus=1))  # doctest: +SKIP
    >>> [r.k for r in res]  # doctest: +SKIP
    [0, 1]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from nas.config import SearchConfig
from nas.errors import UserError
from nas.ray_backend._cluster import alive_nodes, node_resources, ray_cluster, trial_device

__all__ = ["EXPERT_JOBS_FILE", "ExpertTaskResources", "expert_task_resources", "run_expert_jobs_ray"]

log = logging.getLogger(__name__)

#: Where the driver records each expert task's node, device and resume step (in the experts folder).
EXPERT_JOBS_FILE = "ray_jobs.json"

_EPS = 1e-9


@dataclass(frozen=True)
class ExpertTaskResources:
    """Resources of one expert task.

    Attributes:
        cpus: CPUs per task (the task's torch threads: at least 1).
        gpus: GPUs per task (a fraction shares a GPU); ``None``: 1 when the cluster has GPUs, else 0.
        max_retries: resubmissions of a task whose worker or node dies.
    """

    cpus: float = 1.0
    gpus: float | None = None
    max_retries: int = 3


def expert_task_resources(res: ExpertTaskResources, nodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{"cpu": ..., "gpu": ...}`` of one task, checked against the nodes.

    Raises:
        UserError: no node can hold one task (naming the ``experts.*`` key to change).

    Example:
        >>> nodes = [{"Resources": {"CPU": 4.0, "GPU": 1.0}}]
        >>> expert_task_resources(ExpertTaskResources(cpus=2), nodes)
        {'cpu': 2.0, 'gpu': 1.0}
        >>> expert_task_resources(ExpertTaskResources(cpus=8), nodes)
        Traceback (most recent call last):
        ...
        search_spaces.errors.UserError: each expert task asks for 8 CPU(s) and 1 GPU(s) (experts.cpus_per_task, experts.gpus_per_task) but no node of the Ray cluster has that much (largest node: 4 CPU(s), 1 GPU(s)); lower experts.cpus_per_task / experts.gpus_per_task or add a larger node
    """
    gpus = res.gpus
    if gpus is None:
        gpus = 1.0 if sum(node_resources(n, "GPU") for n in nodes) >= 1.0 else 0.0
    need = {"cpu": float(res.cpus), "gpu": float(gpus)}
    if not any(node_resources(n, "CPU") + _EPS >= need["cpu"] and node_resources(n, "GPU") + _EPS >= need["gpu"]
               for n in nodes):
        big_cpu = max((node_resources(n, "CPU") for n in nodes), default=0.0)
        big_gpu = max((node_resources(n, "GPU") for n in nodes), default=0.0)
        raise UserError(
            f"each expert task asks for {need['cpu']:g} CPU(s) and {need['gpu']:g} GPU(s) (experts.cpus_per_task, "
            f"experts.gpus_per_task) but no node of the Ray cluster has that much (largest node: {big_cpu:g} CPU(s), "
            f"{big_gpu:g} GPU(s)); lower experts.cpus_per_task / experts.gpus_per_task or add a larger node"
        )
    return need


def _checkpoint_step(out_dir: Path, k: int) -> int:
    """The step of expert ``k``'s last checkpoint (0 when there is none)."""
    from experts.expert_folder import CHECKPOINTS_DIR

    path = Path(out_dir) / CHECKPOINTS_DIR / f"expert_{k}" / "state.json"
    try:
        return int(json.loads(path.read_text()).get("step", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def _train_expert_task(job: Any, threads: int) -> dict[str, Any]:
    """Body of one Ray task: train (resume, or reuse) one expert of the run folder."""
    import torch

    from experts.training import run_expert_job

    torch.set_num_threads(max(1, threads))
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    device = trial_device(gpu_ids)
    ctx = ray.get_runtime_context()
    resumed_from = _checkpoint_step(job.out_dir, job.k)
    t0 = time.perf_counter()
    res = run_expert_job(job, device=device, progress=False)
    return {"result": res, "k": job.k, "node_id": ctx.get_node_id(), "gpu_ids": gpu_ids,
            "host": socket.gethostname(), "pid": os.getpid(), "device": str(device),
            "torch_threads": torch.get_num_threads(), "resumed_from_step": resumed_from,
            "task_wall_s": round(time.perf_counter() - t0, 3)}


def _write_jobs_file(out_dir: Path, records: list[dict[str, Any]]) -> None:
    """``<experts>/ray_jobs.json`` (temp sibling + rename)."""
    path = Path(out_dir) / EXPERT_JOBS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"jobs": records}, indent=2, sort_keys=True))
    tmp.replace(path)


def task_failure(what: str, err: Exception, retries: int,
                 rerun: str = "rerun (finished jobs are kept)") -> UserError:
    """One line for a Ray task that failed (its error) or died ``retries + 1`` times (``rerun``: the remedy)."""
    if isinstance(err, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        return UserError(f"{what}: its Ray task died {retries + 1} time(s) ({type(err).__name__}); raise "
                         f"experts.max_retries, or {rerun}")
    cause = err.cause if getattr(err, "cause", None) is not None else err
    if isinstance(cause, UserError):
        return UserError(f"{what}: {cause}")
    text = " ".join(str(cause).split())[-400:]
    return UserError(f"{what} failed in its Ray task: {type(cause).__name__}: {text}")


def gather_tasks(refs: Mapping[Any, Hashable], what: str, retries: int, *,
                 on_done: Callable[[Hashable, dict[str, Any]], None] | None = None,
                 rerun: str = "rerun (finished jobs are kept)") -> dict[Hashable, dict[str, Any]]:
    """Wait for the Ray tasks ``refs`` (``{ObjectRef: key}``), ``{key: record}`` in finishing order.

    ``on_done(key, record)`` runs in the driver as each finishes. The first failure raises
    :func:`task_failure` (``"<what> <key>"``, with ``rerun``) and cancels the tasks still running.
    """
    out: dict[Hashable, dict[str, Any]] = {}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            key = refs[ready[0]]
            try:
                rec = ray.get(ready[0])
            except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.NodeDiedError) as err:
                raise task_failure(f"{what} {key}", err, retries, rerun=rerun) from None
            out[key] = rec
            if on_done is not None:
                on_done(key, rec)
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    return out


def run_expert_jobs_ray(
    jobs: Sequence[Any],
    cluster: SearchConfig,
    resources: ExpertTaskResources = ExpertTaskResources(),
) -> list[Any]:
    """Train ``jobs`` (:class:`experts.training.ExpertJob`) as one Ray task each; results by ``k``.

    Args:
        jobs: from :func:`experts.training.prepare_expert_jobs` (all of one experts folder).
        cluster: where to run (``address``; ``num_cpus``/``num_gpus`` size a local Ray); an
            already initialised Ray is used as it is.
        resources: per task.

    Returns:
        the :class:`experts.training.ExpertResult` of each job, in the order of ``jobs``.

    Raises:
        UserError: no node can hold a task, or a task failed (its error, in one line).
    """
    if not jobs:
        return []
    out_dirs = {Path(j.out_dir) for j in jobs}
    if len(out_dirs) != 1:
        raise ValueError("run_expert_jobs_ray: all jobs must belong to one experts folder")
    out_dir = out_dirs.pop()
    with ray_cluster(cluster):
        need = expert_task_resources(resources, alive_nodes())
        threads = max(1, int(need["cpu"]))
        task = ray.remote(_train_expert_task).options(
            num_cpus=need["cpu"], num_gpus=need["gpu"], max_retries=resources.max_retries,
            name="diffnas-expert",
        )
        log.info("training %d experts as Ray tasks (%g CPU, %g GPU each)", len(jobs), need["cpu"], need["gpu"])
        refs = {task.remote(job, threads): job.k for job in jobs}

        def done(k: int, rec: dict[str, Any]) -> None:
            log.info("expert %d done on %s (%s), resumed from step %d", k, rec["host"], rec["device"],
                     rec["resumed_from_step"])

        records = gather_tasks(refs, "expert", resources.max_retries, on_done=done,
                               rerun="rerun to resume from its checkpoint")
    _write_jobs_file(out_dir, [{key: v for key, v in records[k].items() if key != "result"} for k in sorted(records)])
    return [records[j.k]["result"] for j in jobs]
