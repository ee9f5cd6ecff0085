"""Jobs run as Ray tasks beside the studies (the router's training)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ray

from nas.run import to_jsonable
from nas.search import SearchSession

__all__ = ["SideJob", "SideJobRunner"]

log = logging.getLogger(__name__)

#: What a side job's outcome records of where it ran (as the bench's and the experts' jobs do).
_WHERE = ("node", "host", "device")


def _run_side(fn: Callable[[], Any]) -> dict[str, Any]:
    """Body of a side job's Ray task: ``fn()`` and where it ran (node, host, device)."""
    from nas.ray_backend._cluster import trial_device
    from nas.ray_backend._tasks import job_info

    job = job_info(trial_device(ray.get_gpu_ids()))
    return {"value": fn(), **{k: job[k] for k in _WHERE}}


@dataclass(frozen=True)
class SideJob:
    """A function run as a Ray task beside the studies (e.g. the router's training).

    Attributes:
        fn: called with no arguments on a worker; its return value (JSON-able) is recorded.
        num_cpus, num_gpus: resources of the task (``num_gpus=None``: as many as a trial gets).
        refresh_known: when it finishes, re-scan ``allocations/router-<budget>.json`` and
            enqueue the router's allocation in studies still searching (a seeded search only:
            :attr:`nas.search.SearchSession.seeded`).
    """

    fn: Callable[[], Any]
    num_cpus: float = 1.0
    num_gpus: float | None = 0.0
    refresh_known: bool = True


class SideJobRunner:
    """Starts the side jobs as Ray tasks at once; :meth:`poll` records the finished ones (state,
    wall seconds, result and where each ran: node, host, device; the search's ``summary.json``
    keeps them under ``side_jobs``) and enqueues newly written router allocations;
    :meth:`wait_all` waits for the rest."""

    def __init__(self, jobs: Mapping[str, SideJob], session: SearchSession) -> None:
        self._session = session
        self._jobs = dict(jobs)  # num_gpus already resolved
        self._refs: dict[str, Any] = {}
        self._t0: dict[str, float] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}
        for name, job in self._jobs.items():
            remote = ray.remote(num_cpus=job.num_cpus, num_gpus=job.num_gpus, max_retries=0)(_run_side)
            self._refs[name] = remote.remote(job.fn)
            self._t0[name] = time.time()
            log.info("side job %r started (%g CPU, %g GPU)", name, job.num_cpus, job.num_gpus)

    def poll(self, timeout: float = 0.0) -> None:
        if not self._refs:
            return
        ready, _ = ray.wait(list(self._refs.values()), num_returns=len(self._refs), timeout=timeout)
        for name, ref in list(self._refs.items()):
            if ref not in ready:
                continue
            del self._refs[name]
            wall = time.time() - self._t0[name]
            try:
                out = ray.get(ref)
                self.outcomes[name] = {"state": "complete", "wall_s": wall, "result": to_jsonable(out["value"]),
                                       **{k: out[k] for k in _WHERE}}
                log.info("side job %r finished in %.1f s", name, wall)
            except Exception as err:  # noqa: BLE001 - a side job's failure must not stop the search
                self.outcomes[name] = {"state": "failed", "wall_s": wall, "error": " ".join(str(err).split())[-1000:]}
                log.warning("side job %r failed: %s", name, self.outcomes[name]["error"][-300:])
            if self._jobs[name].refresh_known:
                self._session.refresh_known()

    def wait_all(self) -> dict[str, dict[str, Any]]:
        self.poll(timeout=None)  # type: ignore[arg-type]
        return self.outcomes
