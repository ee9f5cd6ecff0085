"""Ray Tune backend of the search: parallel Optuna studies on any Ray cluster.

The only package of the project that imports ``ray``. One ``tune.Tuner`` runs every study of a
search at once (one per budget): a small multiplexing searcher hands out trials round-robin
from one :class:`ray.tune.search.optuna.OptunaSearch` per study (multi-objective metrics and
modes, the persistent Optuna storage passed through), so all studies share the cluster under
one ``max_concurrent_trials``. Each trial gets the resources of ``search.cpus_per_trial`` /
``search.gpus_per_trial`` (fractions share a GPU) and picks its torch device from what Ray
assigned it. Jobs such as the router's training run beside the studies as Ray tasks
(:class:`SideJob`); when one finishes, newly written router allocations are enqueued in a
search seeded with them (``search.seed_with_router``); the default search never sees them.

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
experiment to ``<run_root>/.cache/ray-tune/<run>/search/tune-<time>/`` (beside the run folder, not in it).

Example (a local Ray, two CPUs, a synthetic objective):
    >>> import tempfile
    >>> from nas.config import SearchConfig
    >>> from nas.run import RunDir
    >>> from nas.search import SyntheticObjective, run_search, synthetic_mixture_space
    >>> space = synthetic_mixture_space(num_experts=2)
    >>> cfg = SearchConfig(backend="ray", n_trials=4, num_cpus=2, promote_top_k=0)
    >>> res = run_search(space, SyntheticObjective(space), cfg, RunDir(tempfile.mkdtemp(), "r"))  # doctest: +SKIP
    >>> res.studies[0].n_evaluated  # doctest: +SKIP
    4

Backend seam: :class:`RayBackend` is registered in :mod:`nas.search` by its import path and
imported when ``search.backend=ray`` is chosen; this package depends on :mod:`nas.search`, never
the reverse.

Modules (private; every public name is exported here): ``_cluster`` (connect, fit a trial's
resources to the nodes), ``_trial`` (the trainable), ``_searchers`` (the Optuna searchers in the
driver), ``_side_jobs`` (jobs beside the studies), ``_run`` (:func:`run_search_ray`), ``_expert_tasks``
(one Ray task per expert), ``_ddp`` (one expert data-parallel over several workers), ``_tasks``
(independent jobs as Ray tasks, each committed by the driver: the bench's fine-tuning and sampling).
"""

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
# Tune's per-trial CSV/JSON/TensorBoard result files: diffnas reads none of them (the ledger and the
# Optuna storage are the search's record), and writing them is driver time between two trials
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

# ray is imported by the modules below: the environment above must be set first
from nas.ray_backend._cluster import (  # noqa: E402
    auto_concurrency,
    check_cluster_resources,
    ray_cluster,
    trial_device,
    trial_resources,
)
from nas.ray_backend._ddp import run_expert_job_data_parallel, run_expert_jobs_data_parallel  # noqa: E402
from nas.ray_backend._expert_tasks import ExpertTaskResources, run_expert_jobs_ray  # noqa: E402
from nas.ray_backend._run import RayBackend, run_search_ray  # noqa: E402
from nas.ray_backend._side_jobs import SideJob  # noqa: E402
from nas.ray_backend._tasks import TaskCall, job_info, run_tasks_ray  # noqa: E402

__all__ = [
    "ExpertTaskResources",
    "RayBackend",
    "SideJob",
    "TaskCall",
    "auto_concurrency",
    "check_cluster_resources",
    "job_info",
    "ray_cluster",
    "run_expert_job_data_parallel",
    "run_expert_jobs_data_parallel",
    "run_expert_jobs_ray",
    "run_search_ray",
    "run_tasks_ray",
    "trial_device",
    "trial_resources",
]
