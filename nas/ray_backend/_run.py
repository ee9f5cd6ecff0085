"""The Ray backend's entry point: :func:`run_search_ray` (and :class:`RayBackend`, the same
behind :class:`nas.search.SearchBackend`): fit the per-trial resources to the cluster, run every
study of the session in one ``tune.Tuner``, then settle what an interruption left in flight."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray import tune

from experts.intervals import Intervals
from nas.config import SearchConfig
from nas.ray_backend._cluster import (
    alive_nodes,
    auto_concurrency,
    check_address,
    check_cluster_resources,
    node_resources,
    ray_cluster,
    trial_resources,
)
from nas.ray_backend._searchers import MultiStudySearcher, StudySearcher, TrialRegistry
from nas.ray_backend._side_jobs import SideJob, SideJobRunner
from nas.ray_backend._trial import trainable, trial_dirname
from nas.run import RunDir
from nas.search import Objective, SearchRequest, SearchResult, SearchSession
from nas.search.storage import lock_folder
from search_spaces import SearchSpace

__all__ = ["RayBackend", "run_search_ray"]

log = logging.getLogger("nas.ray_backend")  # the package's logger: one name for its log lines


class RayBackend:
    """``search.backend=ray``: :func:`run_search_ray` behind :class:`nas.search.SearchBackend`."""

    def run(self, request: SearchRequest) -> SearchResult:
        return run_search_ray(request.space, request.objective, request.config, request.run,
                              intervals=request.intervals, seed=request.seed, side_jobs=request.side_jobs)


def run_search_ray(
    space: SearchSpace,
    objective: Objective,
    config: SearchConfig,
    run: RunDir,
    *,
    intervals: Intervals | None = None,
    seed: int = 0,
    side_jobs: Mapping[str, SideJob] | None = None,
) -> SearchResult:
    """Run (or resume) a search with Ray Tune; see :func:`nas.search.run_search` for the
    arguments and outputs."""
    import ray

    if config.address and not ray.is_initialized():
        check_address(config.address)  # bounded, one line, before anything is created
    # the search folder's lock before a local Ray starts: a second driver is refused at once,
    # and the lock holder may clean up what a killed driver's Ray left running
    run.search_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(run.search_dir)
    try:
        with ray_cluster(config, state_dir=run.search_dir, check=False):
            plan = _plan_resources(config, side_jobs or {})
            with SearchSession(space, objective, config, run, intervals, seed, lock_fd=lock) as session:
                jobs = SideJobRunner(plan.side_jobs, session)
                _tuner(session, objective, plan, jobs).fit()
                outcomes = jobs.wait_all()
                return _settle_and_finish(session, outcomes)
    finally:
        os.close(lock)  # releases the flock


@dataclass(frozen=True)
class _Plan:
    """What each trial asks for, how many run at once, and the side jobs with their GPUs resolved."""

    per_trial: dict[str, float]
    concurrency: int
    side_jobs: dict[str, SideJob]


def _plan_resources(config: SearchConfig, side_jobs: Mapping[str, SideJob]) -> _Plan:
    """Fit a trial's and each side job's resources to the cluster's nodes (a
    :class:`~search_spaces.errors.UserError` when none can hold them)."""
    nodes = alive_nodes()
    per_trial = trial_resources(config, nodes)
    check_cluster_resources(per_trial, nodes)
    jobs_resolved = {
        name: (job if job.num_gpus is not None else dataclasses.replace(job, num_gpus=per_trial["gpu"]))
        for name, job in side_jobs.items()
    }
    for name, job in jobs_resolved.items():
        check_cluster_resources({"cpu": job.num_cpus, "gpu": job.num_gpus}, nodes, what=f"side job {name!r}")
    concurrency = config.max_concurrent_trials or auto_concurrency(per_trial, nodes)
    log.info(
        "Ray cluster: %d node(s), %g CPU(s), %g GPU(s); %g CPU + %g GPU per trial, up to %d at once",
        len(nodes), sum(node_resources(n, "CPU") for n in nodes), sum(node_resources(n, "GPU") for n in nodes),
        per_trial["cpu"], per_trial["gpu"], concurrency,
    )
    return _Plan(per_trial, concurrency, jobs_resolved)


def _tune_storage(search_dir: Path) -> Path:
    """Where Ray Tune writes its experiment state: ``<run_root>/.cache/ray-tune/<run>/<search
    folder>/``, beside the run folder, not in it. Tune's files hold absolute paths and diffnas
    never reads them back (the ledger and the Optuna storage are the search's state), so a run
    folder stays free of absolute paths and a moved run continues."""
    run = search_dir.resolve().parent
    return run.parent / ".cache" / "ray-tune" / run.name / search_dir.name


def _tuner(session: SearchSession, objective: Objective, plan: _Plan, jobs: SideJobRunner) -> tune.Tuner:
    """One ``tune.Tuner`` over every study of the session (round-robin searcher), writing its
    experiment to ``<run_root>/.cache/ray-tune/<run>/<search folder>/tune-<time>-<pid>/``."""
    config = session.config
    registry = TrialRegistry()
    searcher = MultiStudySearcher([StudySearcher(drv, session.seed) for drv in session.drivers], registry, jobs.poll)
    resources = {"cpu": plan.per_trial["cpu"], "gpu": plan.per_trial["gpu"]}
    trainable_with_resources = tune.with_resources(tune.with_parameters(trainable, objective=objective), resources)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    return tune.Tuner(
        trainable_with_resources,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,
            max_concurrent_trials=plan.concurrency,
            reuse_actors=True,
            trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{stamp}",
            storage_path=str(_tune_storage(session.search_dir)),
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            # one evaluation reports once: the trial is done at its first result, without a
            # second round trip to its actor to learn that the function returned
            stop={"training_iteration": 1},
            callbacks=[registry],
            verbose=0,
        ),
    )


def _settle_and_finish(session: SearchSession, outcomes: Mapping[str, Any]) -> SearchResult:
    """Answer duplicates whose original never finished, settle what an early stop (Ctrl-C) left
    in flight, write the outputs; re-raise the interruption after writing them."""
    for drv in session.drivers:
        for trial, p in list(drv.parked):
            drv.resolve_parked(p.key)
    unfinished = [drv.spec.name for drv in session.drivers if not drv.finished()]
    if unfinished:  # Tune stopped early: settle what was in flight, keep the rest
        for drv in session.drivers:
            drv.settle_running()
    result = session.finish(side_jobs=outcomes)
    if unfinished:
        log.warning("the search was interrupted before %s finished; re-run the same command to "
                    "continue (finished evaluations are kept)", ", ".join(unfinished))
        raise KeyboardInterrupt
    return result
