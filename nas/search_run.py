"""Running ``diffnas search`` on a run: the mixture space and objective of its experts (or a
synthetic one, a dry run of the cluster set-up), optionally the router's training beside it.
With ``schedule.joint`` the search is over steps x experts, and the steps-only search of the
``steps`` baseline (:func:`steps_search`) runs after it.

The search is independent of the router: it evaluates the full and uniform points first, never
the router's allocation, so ``allocations/search-<b>.json`` is an answer found on its own. With
``search.seed_with_router`` a second search seeded with the router's allocation
(:func:`seeded_search`, in ``search-seeded/``) writes ``allocations/search_seeded-<b>.json``, the
bench method ``search_seeded``.

:func:`search_run` builds the problem and calls :func:`nas.search.run_search`;
:func:`format_search_summary` is what ``diffnas search`` prints.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run import RunContext, RunDir

if TYPE_CHECKING:  # pragma: no cover
    from nas.search import SearchResult

log = logging.getLogger(__name__)

__all__ = ["SearchRunOptions", "SeededSearchDir", "StepsSearchDir", "check_router_job", "format_search_summary",
           "search_run", "seeded_search", "steps_search"]


@dataclass(frozen=True)
class SearchRunOptions:
    """How :func:`search_run` runs beside the config's ``search.*`` keys.

    Attributes:
        with_router: train the routing agent as a Ray task beside the studies (Ray backend
            only); the independent search never sees its allocations, the seeded one
            (``search.seed_with_router``) starts from them.
        synthetic: search a synthetic 3-expert space with a synthetic objective (no model).
        synthetic_sleep: seconds each synthetic evaluation takes.
        synthetic_fail: architecture keys whose synthetic evaluation raises.
    """

    with_router: bool = False
    synthetic: bool = False
    synthetic_sleep: float = 0.0
    synthetic_fail: tuple[str, ...] = ()


def check_router_job(cfg: ExperimentConfig) -> None:
    """Fail if the router cannot run beside the search (it needs the Ray backend)."""
    if cfg.search.backend != "ray":
        raise UserError("--with-router runs the router as a Ray task: it needs search.backend=ray")


def _router_job(cfg: ExperimentConfig) -> Any:
    """The routing agent's training as a side job of the search."""
    from nas.ray_backend import SideJob
    from nas.routing import route_side_job
    from nas.search_objective import absolute_config

    check_router_job(cfg)
    s = cfg.search
    return SideJob(functools.partial(route_side_job, absolute_config(cfg)), num_cpus=s.cpus_per_trial or 1.0,
                   num_gpus=None)


def _synthetic_problem(ctx: RunContext, options: SearchRunOptions) -> tuple[Any, Any, Any]:
    from experts.intervals import Intervals
    from nas.search import SyntheticObjective, synthetic_mixture_space

    space = synthetic_mixture_space(num_experts=3)
    objective = SyntheticObjective(
        space, sleep_s=max(0.0, float(options.synthetic_sleep)), fail_keys=tuple(options.synthetic_fail),
        log_path=str((ctx.run.search_dir / "synthetic-evals.jsonl").resolve()),
    )
    return space, objective, Intervals.uniform(ctx.cfg.model.num_train_timesteps, 3)


def search_run(ctx: RunContext, options: SearchRunOptions) -> SearchResult:
    """Search allocations of the run's experts under ``search.budgets`` (resumable).

    Raises:
        UserError: no trained experts or held-out set (a real search), or ``with_router``
            without the Ray backend.
    """
    from nas.search import run_search
    from nas.search_objective import mixture_problem

    cfg = ctx.cfg
    if options.synthetic:
        space, objective, intervals = _synthetic_problem(ctx, options)
    else:
        problem = mixture_problem(ctx)
        space, objective, intervals = problem.space, problem.objective, problem.intervals
    device = "cpu"
    if cfg.search.backend == "local":
        device = str(ctx.device)
    joint = cfg.schedule.joint and not options.synthetic
    if joint:  # sampled once here, so the trials (other processes) read it from proxy/
        ctx.trajectory_proxy().reference_samples
    if cfg.search.seed_with_router and not options.with_router:
        _check_router_allocations(ctx)  # before any work
    side_jobs = {"router": _router_job(cfg)} if options.with_router else None
    independent = dataclasses.replace(cfg.search, seed_with_router=False)
    result = run_search(space, objective, independent, ctx.run, intervals=intervals, seed=cfg.seed, device=device,
                        side_jobs=side_jobs)
    if cfg.search.seed_with_router:
        seeded_search(ctx, space, objective, intervals, device)
    if joint:
        steps_search(ctx, device)
    return result


def _check_router_allocations(ctx: RunContext) -> list[float]:
    """The budgets without ``allocations/router-<b>.json``; :class:`UserError` when none has one."""
    from nas.search import allocation_path

    budgets = ctx.cfg.search.budgets
    missing = [b for b in budgets if not allocation_path(ctx.run.allocations_dir, "router", b).is_file()]
    if len(missing) == len(budgets):
        raise UserError("search.seed_with_router is true but allocations/ holds no router-<budget>.json for "
                        f"the budgets {[f'{b:g}' for b in budgets]}; run `diffnas route` first "
                        "or set search.seed_with_router=false")
    return missing


class SeededSearchDir(RunDir):
    """The run folder as the search seeded with the router's allocation sees it: its studies,
    trials and summary in ``search-seeded/`` (its ledger lines in ``results.jsonl``, study names
    ``<study_prefix>-seeded-b<budget>``); it writes ``allocations/search_seeded-<budget>.json``."""

    @property
    def search_dir(self) -> Path:
        return self.path / "search-seeded"


def seeded_search(ctx: RunContext, space: Any, objective: Any, intervals: Any, device: str = "cpu") -> SearchResult:
    """The search seeded with the router's allocation (``search.seed_with_router``; the bench
    method ``search_seeded``): the same space, objective and budget of trials as the independent
    search, with ``allocations/router-<b>.json`` evaluated first (resumable, like the search).

    Raises:
        UserError: no router allocation for any budget (run ``diffnas route`` first).
    """
    from nas.search import run_search

    cfg = ctx.cfg
    missing = _check_router_allocations(ctx)
    if missing:
        log.warning("seeded search: no router allocation for budgets %s; those studies start unseeded",
                    ", ".join(f"{b:g}" for b in missing))
    seeded_cfg = dataclasses.replace(cfg.search, seed_with_router=True,
                                     study_prefix=f"{cfg.search.study_prefix}-seeded")
    log.info("search seeded with the router's allocation (the 'search_seeded' method) in %s",
             ctx.run.path / "search-seeded")
    return run_search(space, objective, seeded_cfg, SeededSearchDir(ctx.run.root, ctx.run.name),
                      intervals=intervals, seed=cfg.seed, device=device)


class StepsSearchDir(RunDir):
    """The run folder as the steps-only search sees it: its studies, trials and summary in
    ``search-steps/`` (its ledger lines in ``results.jsonl``, study names ``steps-b<budget>``)."""

    @property
    def search_dir(self) -> Path:
        return self.path / "search-steps"


def steps_search(ctx: RunContext, device: str = "cpu") -> SearchResult:
    """The steps-only search (the ``steps`` baseline): the base model at full width, its step
    schedule searched with the joint search's proxy under ``search.budgets``; writes
    ``allocations/steps-<budget>.json`` (resumable, like the search)."""
    from nas.search import run_search
    from nas.search_objective import steps_problem

    cfg = ctx.cfg
    problem = steps_problem(ctx)
    log.info("steps-only search (the 'steps' baseline) in %s", ctx.run.path / "search-steps")
    return run_search(problem.space, problem.objective, dataclasses.replace(cfg.search, study_prefix="steps"),
                      StepsSearchDir(ctx.run.root, ctx.run.name), intervals=problem.intervals, seed=cfg.seed,
                      device=device)


def format_search_summary(result: SearchResult) -> str:
    """Plain-text summary of a search (what ``diffnas search`` prints)."""
    lines = []
    for s in result.studies:
        c = s.counts
        lines.append(
            f"study {s.name}: {s.n_evaluated} evaluated ({s.n_failed} failed), {s.n_promoted} promoted, "
            f"{c.get('duplicates', 0)} duplicate proposals answered from stored results, "
            f"{c.get('interrupted', 0)} interrupted trials re-queued"
        )
        for b, rec in sorted(s.best.items()):
            if rec is None:
                why = (f" (the smallest architecture needs {s.min_macs_ratio:.3f} of the base MACs)"
                       if s.min_macs_ratio > b else "")
                lines.append(f"  budget {b:g}: no feasible architecture evaluated{why}")
                continue
            full = "" if rec.get("quality_full") is None else f", {rec['selected_by']} {rec['quality_full']:.4g}"
            lines.append(
                f"  budget {b:g}: best trial {rec['number']} quality {rec['quality']:.4g}{full} "
                f"at {rec['macs_ratio']:.3f} of the base MACs (selected by {rec['selected_by']})"
            )
        lines.append(f"  cost: {s.cost}")
    for b, path in sorted(result.allocations.items()):
        lines.append(f"allocation {b:g}: {path}")
    lines.append(f"trial table: {result.trial_table}")
    lines.append(f"summary: {result.summary_path}")
    lines.append(f"optuna storage: {result.storage}  (optuna-dashboard {result.storage})")
    lines.append(f"wall time: {result.wall_s:.1f} s")
    return "\n".join(lines) + "\n"
