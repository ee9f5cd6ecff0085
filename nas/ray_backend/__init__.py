"""Ray Tune backend of the search: parallel Optuna studies on any Ray cluster.

The only package of the project that imports ``ray``. One ``tune.Tuner`` runs every study of a
search at once (one per budget): a small multiplexing searcher hands out trials round-robin
from one :class:`ray.tune.search.optuna.OptunaSearch` per study (multi-objective metrics and
modes, the persistent Optuna storage passed through), so all studies share the cluster under
one ``max_concurrent_trials``. Each trial gets the resources of ``search.cpus_per_trial`` /
``search.gpus_per_trial`` (fractions share a GPU) and picks its torch device from what Ray
assigned it. Jobs such as the router's training run beside the studies as Ray tasks
(:class:`SideJob`); when one finishes, newly written router allocations are enqueued.

Cluster: a local Ray is started by default (``ray.init(num_cpus=..., include_dashboard=False)``,
usage stats off); ``search.address`` ``auto`` or ``host:port`` joins a running cluster. Before
anything runs, the per-trial request is compared with the nodes: a trial that no node can hold
(more GPUs than any node has) is a :class:`~search_spaces.errors.UserError` at once, instead of
a trial that stays PENDING forever.

Faults and resume: Tune retries a trial that raises or whose worker dies up to
``search.max_failures`` times (``tune.FailureConfig``); after that the trial is committed as
failed and the study goes on. Tune's own experiment state is *not* what resumes a search (its
periodic snapshot can lag the trials that finished): the commit point is the line in
``results.jsonl`` written by the driver as each trial finishes, and the next run reconciles the
Optuna storage with it (:class:`nas.search.StudyDriver`). Each session writes its Tune
experiment to ``search/ray/tune-<time>/``.

Example (a local Ray, two CPUs, a synthetic objective):
    >>> import tempfile
    >>> from nas.config import SearchConfig
    >>> from nas.rundir import RunDir
    >>> from nas.search import SyntheticObjective, run_search, synthetic_mixture_space
    >>> space = synthetic_mixture_space(num_experts=2)
    >>> cfg = SearchConfig(backend="ray", n_trials=4, num_cpus=2, promote_top_k=0)
    >>> res = run_search(space, SyntheticObjective(space), cfg, RunDir(tempfile.mkdtemp(), "r"))  # doctest: +SKIP
    >>> res.studies[0].n_evaluated  # doctest: +SKIP
    4

Modules: :mod:`~nas.ray_backend.cluster` (connect, fit a trial's resources to the nodes),
:mod:`~nas.ray_backend.trial` (the trainable), :mod:`~nas.ray_backend.searchers` (the Optuna
searchers in the driver), :mod:`~nas.ray_backend.side_jobs`; the entry point is here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0

from ray import tune  # noqa: E402 - after the environment above

from experts.intervals import Intervals  # noqa: E402
from nas.config import SearchConfig  # noqa: E402
from nas.ray_backend.cluster import (  # noqa: E402,F401
    _EPS,
    _alive_nodes,
    _node_res,
    auto_concurrency,
    check_cluster_resources,
    ray_cluster,
    trial_device,
    trial_resources,
)
from nas.ray_backend.searchers import _MultiStudySearcher, _outcome, _StudySearcher, _TrialRegistry  # noqa: E402,F401
from nas.ray_backend.side_jobs import SideJob, _SideJobs  # noqa: E402,F401
from nas.ray_backend.trial import _trainable, _trial_dirname  # noqa: E402,F401
from nas.rundir import RunDir  # noqa: E402
from nas.search import Objective, SearchResult, SearchSession  # noqa: E402
from search_spaces import SearchSpace  # noqa: E402

__all__ = [
    "SideJob",
    "auto_concurrency",
    "check_cluster_resources",
    "ray_cluster",
    "run_search_ray",
    "trial_device",
    "trial_resources",
]

log = logging.getLogger(__name__)


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
    with ray_cluster(config):
        nodes = _alive_nodes()
        per_trial = trial_resources(config, nodes)
        check_cluster_resources(per_trial, nodes)
        jobs_resolved = {
            name: (job if job.num_gpus is not None else dataclasses.replace(job, num_gpus=per_trial["gpu"]))
            for name, job in (side_jobs or {}).items()
        }
        for name, job in jobs_resolved.items():
            check_cluster_resources({"cpu": job.num_cpus, "gpu": job.num_gpus}, nodes, what=f"side job {name!r}")
        concurrency = config.max_concurrent_trials or auto_concurrency(per_trial, nodes)
        log.info(
            "Ray cluster: %d node(s), %g CPU(s), %g GPU(s); %g CPU + %g GPU per trial, up to %d at once",
            len(nodes), sum(_node_res(n, "CPU") for n in nodes), sum(_node_res(n, "GPU") for n in nodes),
            per_trial["cpu"], per_trial["gpu"], concurrency,
        )
        with SearchSession(space, objective, config, run, intervals, seed) as session:
            jobs = _SideJobs(jobs_resolved, session)
            registry = _TrialRegistry()
            searcher = _MultiStudySearcher(
                [_StudySearcher(drv, session.seed) for drv in session.drivers], registry, jobs.poll
            )
            resources = {"cpu": per_trial["cpu"], "gpu": per_trial["gpu"]}
            trainable = tune.with_resources(tune.with_parameters(_trainable, objective=objective), resources)
            stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    num_samples=-1,
                    max_concurrent_trials=concurrency,
                    reuse_actors=True,
                    trial_name_creator=_trial_dirname,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=f"tune-{stamp}",
                    storage_path=str((session.search_dir / "ray").resolve()),
                    failure_config=tune.FailureConfig(max_failures=config.max_failures),
                    callbacks=[registry],
                    verbose=0,
                ),
            )
            tuner.fit()
            outcomes = jobs.wait_all()
            for drv in session.drivers:
                for trial, p in list(drv.parked):  # duplicates whose original never finished
                    drv.resolve_parked(p.key)
            unfinished = [drv.spec.name for drv in session.drivers if not drv.finished()]
            if unfinished:  # Tune stopped early (Ctrl-C): settle what was in flight, keep the rest
                for drv in session.drivers:
                    drv.settle_running()
            result = session.finish(side_jobs=outcomes)
            if unfinished:
                log.warning("the search was interrupted before %s finished; re-run the same command to "
                            "continue (finished evaluations are kept)", ", ".join(unfinished))
                raise KeyboardInterrupt
            return result
