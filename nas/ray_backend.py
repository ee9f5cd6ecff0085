"""Ray Tune backend of the search: parallel Optuna studies on any Ray cluster.

The only module of the project that imports ``ray``. One ``tune.Tuner`` runs every study of a
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0

import ray  # noqa: E402 - after the environment above
from ray import tune  # noqa: E402
from ray.tune import Callback  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from experts.intervals import Intervals  # noqa: E402
from nas.config import SearchConfig  # noqa: E402
from nas.errors import UserError  # noqa: E402
from nas.rundir import RunDir, to_jsonable  # noqa: E402
from nas.search import (  # noqa: E402
    EvalContext,
    Objective,
    Proposal,
    SearchResult,
    SearchSession,
    StudyDriver,
    TrialOutcome,
)
from search_spaces import Arch, SearchSpace  # noqa: E402

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

_EPS = 1e-9


# ============================================================================================
# Cluster and resources
# ============================================================================================


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


def _alive_nodes() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _node_res(node: Mapping[str, Any], name: str) -> float:
    return float(node.get("Resources", {}).get(name, 0.0))


def trial_resources(config: SearchConfig, nodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{"cpu": ..., "gpu": ...}`` for one trial; ``gpus_per_trial=None`` means one GPU when the
    cluster has any, else none."""
    gpus = config.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if sum(_node_res(n, "GPU") for n in nodes) >= 1.0 else 0.0
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
        if _node_res(n, "CPU") + _EPS >= need_cpu and _node_res(n, "GPU") + _EPS >= need_gpu:
            return
    count = len(nodes)
    for res, need, key in (("GPU", need_gpu, "search.gpus_per_trial"), ("CPU", need_cpu, "search.cpus_per_trial")):
        best = max((_node_res(n, res) for n in nodes), default=0.0)
        total = sum(_node_res(n, res) for n in nodes)
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
                fits.append(int(math.floor(_node_res(n, res) / need + _EPS)))
        total += min(fits) if fits else int(_node_res(n, "CPU"))
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


# ============================================================================================
# The trial (runs on a worker)
# ============================================================================================


def _trainable(config: dict[str, Any], objective: Objective | None = None) -> None:
    """One evaluation: the architecture and fidelity come in ``config["diffnas"]``."""
    job = config["diffnas"]
    if objective is None:  # pragma: no cover - always passed with tune.with_parameters
        raise RuntimeError("no objective passed to the trial")
    gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
    node_id = ray.get_runtime_context().get_node_id()
    device = trial_device(gpu_ids)
    ctx = EvalContext(
        study=job["study"], trial_number=int(job["number"]), key=job["key"], fidelity=job["fidelity"],
        device=device, seed=int(job["seed"]), budget_ratio=job["budget_ratio"], node_id=node_id, gpu_ids=gpu_ids,
    )
    start = time.time()
    metrics = dict(objective.evaluate(Arch(job["arch"]), job["fidelity"], ctx))
    end = time.time()
    try:
        quality = float(metrics.get("quality"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        quality = float("nan")
    payload = {
        "metrics": metrics,
        "placement": {"node_id": node_id, "gpu_ids": list(gpu_ids), "pid": os.getpid(),
                      "host": socket.gethostname(), "device": device, "start": start, "end": end},
        "eval_s": end - start,
    }
    tune.report({"quality": quality, "macs_ratio": float(job["macs_ratio"]),
                 "diffnas_payload": json.dumps(to_jsonable(payload))})


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# ============================================================================================
# Searchers (run in the driver)
# ============================================================================================


def _outcome(result: Mapping[str, Any] | None, error: bool, error_text: str | None, attempts: int) -> TrialOutcome:
    if error or not result or "diffnas_payload" not in result:
        return TrialOutcome(None, error_text or "the trial failed (no error text)", {}, 0.0, attempts)
    payload = json.loads(result["diffnas_payload"])
    return TrialOutcome(payload.get("metrics"), None, payload.get("placement") or {},
                        float(payload.get("eval_s") or 0.0), attempts)


class _StudySearcher(OptunaSearch):
    """``OptunaSearch`` over one study, sharing the :class:`StudyDriver`'s ``Study`` (same
    storage, sampler, directions), with the driver's bookkeeping around ask and tell: duplicates
    answered from the ledger, the ledger commit before the tell, then the promotion phase."""

    def __init__(self, driver: StudyDriver, seed: int) -> None:
        self._driver = driver
        self._seed_eval = int(seed)
        self._proposals: dict[str, Proposal] = {}
        self._phase = "search"
        self._promotions: list[Proposal] = []
        constrained = driver.spec.constrained
        super().__init__(
            space=dict(driver.distributions),
            metric="quality" if constrained else ["quality", "macs_ratio"],
            mode="min" if constrained else ["min", "min"],
            sampler=driver.study.sampler,
            study_name=driver.spec.name,
            storage=driver.storage,
        )

    def _setup_study(self, mode: Any) -> None:  # share the driver's Study, do not create another
        self._ot_study = self._driver.study

    def _config(self, p: Proposal) -> dict[str, Any]:
        return {"diffnas": {
            "study": p.study, "number": p.number, "key": p.key, "fidelity": p.fidelity, "arch": p.arch.to_dict(),
            "macs_ratio": p.macs_ratio, "budget_ratio": self._driver.spec.budget_ratio, "seed": self._seed_eval,
        }}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        drv = self._driver
        if self._phase == "search":
            def ask() -> Any:
                super(_StudySearcher, self).suggest(trial_id)  # Optuna ask (or the trial already asked for this id)
                return self._ot_trials[trial_id]

            got = drv.next_proposal(ask=ask, settled=lambda: self._ot_trials.pop(trial_id, None))
            if got is not None:
                self._proposals[trial_id] = got[1]
                return self._config(got[1])
            if not drv.search_done():
                return None  # evaluations in flight; the promotion phase waits for them
            self._phase = "promote"
            self._promotions = drv.promotion_candidates()
        if self._promotions:
            p = self._promotions.pop(0)
            drv.start_promotion(p)
            self._proposals[trial_id] = p
            return self._config(p)
        if drv.inflight_promotions:
            return None
        self._phase = "done"
        return Searcher.FINISHED

    def complete(self, trial_id: str, result: Mapping[str, Any] | None, error: bool,
                 error_text: str | None, attempts: int) -> None:
        p = self._proposals.pop(trial_id, None)
        if p is None:
            return
        drv = self._driver
        if not error and not (result and "diffnas_payload" in result):
            # stopped without a result (the run was interrupted): nothing to commit; the Optuna
            # trial stays RUNNING and is settled as interrupted (and re-queued) by reconcile
            if p.fidelity == drv.search_fidelity:
                drv.inflight.pop(p.key, None)
            else:
                drv.inflight_promotions.discard(p.key)
            return
        outcome = _outcome(result, error, error_text, attempts)
        if p.fidelity != drv.search_fidelity:
            drv.commit_promotion(p, outcome)
            return
        rec = drv.commit(p, outcome)  # the commit point: results.jsonl first ...
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            drv.annotate(ot_trial, rec)
        values = drv.values_of(rec)
        names = ["quality"] if drv.spec.constrained else ["quality", "macs_ratio"]
        payload = None if values is None else dict(zip(names, values))
        super().on_trial_complete(trial_id, result=payload, error=values is None)  # ... then Optuna
        drv.resolve_parked(p.key)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"note": "diffnas resumes from the Optuna storage and results.jsonl"}))

    def restore(self, checkpoint_path: str) -> None:  # pragma: no cover - Tuner.restore is not used
        raise NotImplementedError("diffnas resumes a search by re-running it, not with Tuner.restore")

    def __getstate__(self) -> dict[str, Any]:  # tuner.pkl: nothing to restore from
        return {"_diffnas": "not restorable"}


class _TrialRegistry(Callback):
    """Keeps Tune's trial objects so a failed trial's error text and failure count can be read."""

    def __init__(self) -> None:
        self._trials: dict[str, Any] = {}

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        for t in trials:
            self._trials.setdefault(t.trial_id, t)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._trials[trial.trial_id] = trial

    def failures(self, trial_id: str) -> int:
        t = self._trials.get(trial_id)
        return int(getattr(getattr(t, "run_metadata", None), "num_failures", 0) or 0) if t is not None else 0

    def error_text(self, trial_id: str) -> str | None:
        t = self._trials.get(trial_id)
        path = getattr(t, "error_file", None) if t is not None else None
        if not path or not os.path.exists(path):
            return None
        text = Path(path).read_text(errors="replace").strip()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        tail = [ln for ln in lines if not ln.startswith("Failure #")][-6:]
        return "\n".join(tail)[-2000:]

    def __getstate__(self) -> dict[str, Any]:
        return {"_trials": {}}


class _MultiStudySearcher(Searcher):
    """Hands out trials round-robin from several studies; routes completions back."""

    def __init__(self, sources: Sequence[_StudySearcher], registry: _TrialRegistry,
                 poll: Callable[[], None] | None = None) -> None:
        super().__init__(metric=None, mode=None)
        self._sources = list(sources)
        self._registry = registry
        self._poll = poll
        self._owner: dict[str, _StudySearcher] = {}
        self._finished: set[int] = set()
        self._rr = 0

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._poll is not None:
            self._poll()
        n = len(self._sources)
        for i in range(n):
            j = (self._rr + i) % n
            if j in self._finished:
                continue
            cfg = self._sources[j].suggest(trial_id)
            if cfg == Searcher.FINISHED:
                self._finished.add(j)
                continue
            if cfg is None:
                continue
            self._owner[trial_id] = self._sources[j]
            self._rr = (j + 1) % n
            return cfg
        return Searcher.FINISHED if len(self._finished) == n else None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        src = self._owner.pop(trial_id, None)
        if src is None:
            return
        failures = self._registry.failures(trial_id)
        attempts = failures if error else failures + 1
        src.complete(trial_id, result, error, self._registry.error_text(trial_id) if error else None, max(1, attempts))

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"note": "diffnas resumes from the Optuna storage and results.jsonl"}))

    def restore(self, checkpoint_path: str) -> None:  # pragma: no cover - Tuner.restore is not used
        raise NotImplementedError("diffnas resumes a search by re-running it, not with Tuner.restore")

    def __getstate__(self) -> dict[str, Any]:
        return {"_diffnas": "not restorable"}


# ============================================================================================
# Side jobs (router training beside the studies)
# ============================================================================================


@dataclass(frozen=True)
class SideJob:
    """A function run as a Ray task beside the studies (e.g. the router's training).

    Attributes:
        fn: called with no arguments on a worker; its return value (JSON-able) is recorded.
        num_cpus, num_gpus: resources of the task (``num_gpus=None``: as many as a trial gets).
        refresh_known: when it finishes, re-scan ``allocations/router-<budget>.json`` and
            enqueue the router's allocation in studies still searching.
    """

    fn: Callable[[], Any]
    num_cpus: float = 1.0
    num_gpus: float | None = 0.0
    refresh_known: bool = True


class _SideJobs:
    def __init__(self, jobs: Mapping[str, SideJob], session: SearchSession) -> None:
        self._session = session
        self._jobs = dict(jobs)  # num_gpus already resolved
        self._refs: dict[str, Any] = {}
        self._t0: dict[str, float] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}
        for name, job in self._jobs.items():
            remote = ray.remote(num_cpus=job.num_cpus, num_gpus=job.num_gpus, max_retries=0)(job.fn)
            self._refs[name] = remote.remote()
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
                value = ray.get(ref)
                self.outcomes[name] = {"state": "complete", "wall_s": wall, "result": to_jsonable(value)}
                log.info("side job %r finished in %.1f s", name, wall)
            except Exception as err:  # noqa: BLE001 - a side job's failure must not stop the search
                self.outcomes[name] = {"state": "failed", "wall_s": wall, "error": " ".join(str(err).split())[-1000:]}
                log.warning("side job %r failed: %s", name, self.outcomes[name]["error"][-300:])
            if self._jobs[name].refresh_known:
                self._session.refresh_known()

    def wait_all(self) -> dict[str, dict[str, Any]]:
        self.poll(timeout=None)  # type: ignore[arg-type]
        return self.outcomes


# ============================================================================================
# Entry point
# ============================================================================================


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
