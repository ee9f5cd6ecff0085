"""Connecting to Ray and fitting a trial's resources to the cluster's nodes."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ray

from nas.config import SearchConfig
from nas.errors import UserError

__all__ = [
    "alive_nodes",
    "auto_concurrency",
    "check_cluster_resources",
    "node_resources",
    "ray_cluster",
    "trial_device",
    "trial_resources",
]

log = logging.getLogger(__name__)

_EPS = 1e-9


@contextlib.contextmanager
def ray_cluster(config: SearchConfig) -> Iterator[bool]:
    """Connect to Ray for the duration of a search; yields True when this call started it.

    An already initialised Ray (a test's ``Cluster``, a user's session) is used as it is.
    ``config.address`` ``None`` starts a local instance (shut down afterwards); ``auto`` or an
    address joins a running cluster (``ray start --head`` on one node, ``ray start
    --address=<head>:6379`` on the others).
    """
    if ray.is_initialized():
        yield False
        return
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if config.address:
        try:
            ray.init(address=config.address, **common)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(
                f"cannot join the Ray cluster at {config.address!r}: {' '.join(str(err).split())[:300]} "
                "(start one with 'ray start --head' and run from a node of it, or leave search.address unset "
                "for a local Ray)"
            ) from None
    else:
        num_gpus = config.num_gpus
        if num_gpus is not None and float(num_gpus).is_integer():
            num_gpus = int(num_gpus)
        # address="local": always a fresh instance; a bare ray.init() would silently join any Ray
        # already running on this machine (and then refuse num_cpus/num_gpus)
        ray.init(address="local", num_cpus=config.num_cpus, num_gpus=num_gpus, include_dashboard=False, **common)
    try:
        yield True
    finally:
        ray.shutdown()


def alive_nodes() -> list[dict[str, Any]]:
    """The nodes of the connected Ray cluster that are alive."""
    return [n for n in ray.nodes() if n.get("Alive")]


def node_resources(node: Mapping[str, Any], name: str) -> float:
    """How much of resource ``name`` (``CPU``, ``GPU``) a node of :func:`alive_nodes` has."""
    return float(node.get("Resources", {}).get(name, 0.0))


def trial_resources(config: SearchConfig, nodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{"cpu": ..., "gpu": ...}`` for one trial; ``gpus_per_trial=None`` means one GPU when the
    cluster has any, else none."""
    gpus = config.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if sum(node_resources(n, "GPU") for n in nodes) >= 1.0 else 0.0
    return {"cpu": float(config.cpus_per_trial), "gpu": float(gpus)}


def check_cluster_resources(
    per_trial: Mapping[str, float], nodes: Sequence[Mapping[str, Any]], what: str = "each trial"
) -> None:
    """Raise :class:`UserError` (naming the numbers) when no node can hold ``per_trial``.

    Example:
        >>> nodes = [{"Resources": {"CPU": 4.0, "GPU": 1.0}}, {"Resources": {"CPU": 4.0, "GPU": 1.0}}]
        >>> check_cluster_resources({"cpu": 1, "gpu": 1}, nodes)
        >>> check_cluster_resources({"cpu": 1, "gpu": 2}, nodes)
        Traceback (most recent call last):
        ...
        search_spaces.errors.UserError: each trial asks for 2 GPU(s) (search.gpus_per_trial) but no node of the Ray cluster has that many: the largest node has 1 GPU(s), the cluster 2 GPU(s) over 2 node(s); lower search.gpus_per_trial (a fraction shares a GPU between trials) or add a node with more GPUs
    """
    need_cpu = float(per_trial.get("cpu", 0.0))
    need_gpu = float(per_trial.get("gpu", 0.0))
    if need_gpu > 1 and not need_gpu.is_integer():
        raise UserError(f"{what} asks for {need_gpu:g} GPUs: above one GPU, Ray needs a whole number")
    for n in nodes:
        if node_resources(n, "CPU") + _EPS >= need_cpu and node_resources(n, "GPU") + _EPS >= need_gpu:
            return
    count = len(nodes)
    for res, need, key in (("GPU", need_gpu, "search.gpus_per_trial"), ("CPU", need_cpu, "search.cpus_per_trial")):
        best = max((node_resources(n, res) for n in nodes), default=0.0)
        total = sum(node_resources(n, res) for n in nodes)
        if need > best + _EPS:
            fix = (
                "lower search.gpus_per_trial (a fraction shares a GPU between trials) or add a node with more GPUs"
                if res == "GPU" else "lower search.cpus_per_trial or add a node with more CPUs"
            )
            raise UserError(
                f"{what} asks for {need:g} {res}(s) ({key}) but no node of the Ray cluster has that many: "
                f"the largest node has {best:g} {res}(s), the cluster {total:g} {res}(s) over {count} node(s); {fix}"
            )
    raise UserError(
        f"{what} asks for {need_cpu:g} CPU(s) and {need_gpu:g} GPU(s) on one node, and no node of the Ray "
        f"cluster ({count} node(s)) has both; change search.cpus_per_trial / search.gpus_per_trial"
    )


def auto_concurrency(per_trial: Mapping[str, float], nodes: Sequence[Mapping[str, Any]]) -> int:
    """How many trials fit in the cluster at once (at least 1).

    Example:
        >>> auto_concurrency({"cpu": 1, "gpu": 0.5}, [{"Resources": {"CPU": 8.0, "GPU": 2.0}}])
        4
    """
    total = 0
    for n in nodes:
        fits = []
        for res, key in (("CPU", "cpu"), ("GPU", "gpu")):
            need = float(per_trial.get(key, 0.0))
            if need > 0:
                fits.append(int(math.floor(node_resources(n, res) / need + _EPS)))
        total += min(fits) if fits else int(node_resources(n, "CPU"))
    return max(1, total)


def trial_device(gpu_ids: Sequence[Any]) -> str:
    """Torch device for a trial: ``cuda`` when Ray gave it a GPU and CUDA works (Ray sets
    ``CUDA_VISIBLE_DEVICES``, so ``cuda`` is the assigned GPU), else ``cpu``.

    Example:
        >>> trial_device([])
        'cpu'
    """
    if not gpu_ids:
        return "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return "cpu"
