"""Independent jobs as Ray tasks, each committed by the driver as it finishes (the bench's
fine-tuning and sampling, :mod:`benchmarks.bench.parallel`).

:func:`run_tasks_ray` submits one task per :class:`TaskCall`: ``fn(*args, job=<where it runs>)``,
``fn`` a module-level function (Ray pickles it by reference, so every node imports the same
code). The task sets ``cpus`` torch threads, picks the torch device Ray assigned it (``cuda`` for a
task with a GPU) and passes it in ``job`` with the node, host and process, so the function can
record where it ran next to what it wrote. The driver calls ``on_done(key, record)`` as each task
finishes, in completion order, one at a time: the one place where results are committed. A task
whose worker or node dies is resubmitted (``max_retries``); a function that raises stops the
whole call with one line (a :class:`~search_spaces.errors.UserError` keeps its text).

Example (a local Ray with one CPU)::

    >>> from nas.config import SearchConfig
    >>> from nas.ray_backend import ExpertTaskResources, TaskCall, run_tasks_ray  # doctest: +SKIP
    >>> out = run_tasks_ray([TaskCall("a", divmod, (7, 2))], SearchConfig(num_cpus=1),
    ...                     ExpertTaskResources(cpus=1))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from nas.config import SearchConfig
from nas.errors import UserError
from nas.ray_backend._cluster import alive_nodes, ray_cluster, trial_device
from nas.ray_backend._expert_tasks import ExpertTaskResources, expert_task_resources, gather_tasks

__all__ = ["TaskCall", "job_info", "run_tasks_ray"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskCall:
    """One job: ``fn(*args, job=...)`` in a Ray task.

    Attributes:
        key: names the job in ``on_done``, in the result and in error lines (``str(key)``).
        fn: a module-level function taking a ``job`` keyword (:func:`job_info`'s dict).
        args: its positional arguments (picklable).
    """

    key: Hashable
    fn: Callable[..., Any]
    args: tuple[Any, ...] = field(default_factory=tuple)


def job_info(device: str = "cpu") -> dict[str, Any]:
    """Where this process runs: ``{node, host, pid, device, torch_threads}`` (``node``: the Ray node
    id inside a task, else None).

    Example:
        >>> sorted(job_info())
        ['device', 'host', 'node', 'pid', 'torch_threads']
    """
    import torch

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {"node": node, "host": socket.gethostname(), "pid": os.getpid(), "device": str(device),
            "torch_threads": torch.get_num_threads()}


def _run_call(fn: Callable[..., Any], args: tuple[Any, ...], threads: int) -> dict[str, Any]:
    """Body of one Ray task: threads and device, then ``fn``; the job's record."""
    import torch

    torch.set_num_threads(max(1, threads))
    job = job_info(trial_device(ray.get_gpu_ids()))
    t0 = time.perf_counter()
    result = fn(*args, job=job)
    return {**job, "result": result, "task_wall_s": round(time.perf_counter() - t0, 3)}


def run_tasks_ray(
    calls: Sequence[TaskCall],
    cluster: SearchConfig,
    resources: ExpertTaskResources = ExpertTaskResources(),
    *,
    name: str = "diffnas-task",
    on_done: Callable[[Hashable, dict[str, Any]], None] | None = None,
) -> dict[Hashable, dict[str, Any]]:
    """Run ``calls`` as one Ray task each; ``{key: record}`` with ``record["result"]`` what ``fn``
    returned, and ``node``, ``host``, ``pid``, ``device``, ``torch_threads``, ``task_wall_s``.

    Args:
        calls: the jobs (keys distinct).
        cluster: where to run (``address``; ``num_cpus``/``num_gpus`` size a local Ray); an already
            initialised Ray is used as it is.
        resources: per task (``cpus`` is also its torch threads).
        name: the tasks' name (their workers are titled ``ray::<name>``).
        on_done: called in the driver with ``(key, record)`` as each task finishes.

    Raises:
        UserError: no node can hold a task, or a task failed (its error, in one line); the tasks
            still running are cancelled.
    """
    keys = [c.key for c in calls]
    if len(set(keys)) != len(keys):
        raise ValueError("run_tasks_ray: task keys must be distinct")
    if not calls:
        return {}
    with ray_cluster(cluster):
        need = expert_task_resources(resources, alive_nodes())
        threads = max(1, int(need["cpu"]))
        task = ray.remote(_run_call).options(num_cpus=need["cpu"], num_gpus=need["gpu"],
                                             max_retries=resources.max_retries, name=name)
        log.info("%d %s jobs as Ray tasks (%g CPU, %g GPU each)", len(calls), name, need["cpu"], need["gpu"])
        refs = {task.remote(c.fn, c.args, threads): c.key for c in calls}
        return gather_tasks(refs, name, resources.max_retries, on_done=on_done)
