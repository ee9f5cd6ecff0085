"""The method's stages of ``diffnas run`` (registered in :mod:`nas.run`'s stage registry).

====  ==========  ==========================================  =====================================
 #    stage       what it does                                outputs checked
====  ==========  ==========================================  =====================================
 1    base        train (or load) the base model              ``base/`` (embedded model folder)
 2    intervals   timestep similarity -> intervals            ``intervals.json``
 3    experts     one elastic expert per interval             ``experts/intervals.json``
 4    router      Expert Routing Agent                        ``allocations/router-<b>.json``
 5    search      Optuna/Ray search of allocations            ``allocations/search-<b>.json``
====  ==========  ==========================================  =====================================

The benchmarks package adds ``finetune`` (fine-tune every pruned model at equal cost), ``bench``
(FID/KID, MACs, latency per method and budget) and ``report`` (Pareto fronts, tables, plots)
through its ``diffnas.plugins`` entry point, loaded here after the method's stages.

A stage is skipped when ``pipeline.json`` in the run folder records it as finished with the same
*stage key* (a hash of the config sections the stage and the stages before it depend on), its
outputs exist and no stage before it ran in this call; otherwise it runs (every stage resumes or
reuses its own partial outputs, so a rerun after an upstream change only redoes what changed).
``--skip STAGE`` leaves a stage out on purpose (the benchmark then skips the methods that need
it, and says so). The budgets compared are ``bench.budgets``; ``search.budgets`` (and
``router.budgets``) are set to them so all methods are made for the same budgets.

Example::

    >>> from nas.config import load_config
    >>> from nas.run import run_pipeline
    >>> result = run_pipeline(load_config(preset="demo"))  # doctest: +SKIP
    >>> result.report  # doctest: +SKIP
    PosixPath('runs/demo/report/index.html')
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from nas.methods import load_plugins
from nas.run import RunContext, Stage, register_stage

log = logging.getLogger(__name__)

__all__ = ["METHOD_STAGES"]


def _base(ctx: RunContext) -> str:
    base = ctx.base
    n = sum(p.numel() for p in base.unet.parameters())
    return f"{base.source}: {type(base.unet).__name__}, {n / 1e6:.2f}M parameters"


def _intervals(ctx: RunContext) -> str:
    from nas.intervals import run_intervals

    result, reused = run_intervals(ctx)
    return result.summary() + (" (stored matrix reused)" if reused else "")


def _experts(ctx: RunContext) -> str:
    from nas.experts_stage import train_run_experts

    outcome = train_run_experts(ctx)
    for line in outcome.lines():
        log.info("%s", line)
    return "diffnas train-experts done"


def _router(ctx: RunContext) -> str:
    from nas.routing import format_route_summary, route, route_on_cluster

    if ctx.cfg.search.address is not None:  # a cluster was named: the agent trains on one of its nodes
        job = route_on_cluster(ctx)
        return f"diffnas route done (Ray task on {job['host']}, {job['device']})"
    outcome = route(ctx)
    if outcome.up_to_date:
        log.info("router allocations for budgets %s are up to date in %s", list(ctx.cfg.router.budgets),
                 ctx.run.allocations_dir)
    else:
        log.info("%s", "\n".join([*outcome.skipped, format_route_summary(outcome).rstrip("\n")]))
    return "diffnas route done"


def _search(ctx: RunContext) -> str:
    from nas.search_run import SearchRunOptions, format_search_summary, search_run

    result = search_run(ctx, SearchRunOptions())
    log.info("%s", format_search_summary(result).rstrip("\n"))
    return "diffnas search done"


def _allocations(method: str) -> Callable[[RunContext], list[Path]]:
    def outputs(ctx: RunContext) -> list[Path]:
        return [ctx.run.allocations_dir / f"{method}-{b:g}.json" for b in ctx.cfg.bench.budgets]

    return outputs


#: The method's stages, in order.
METHOD_STAGES: tuple[Stage, ...] = (
    Stage("base", "base model (train the embedded one once, or load it)", ("seed", "data", "model"), _base,
          lambda ctx: [ctx.run.base_dir], 10),
    Stage("intervals", "timestep similarity -> intervals", ("intervals",), _intervals,
          lambda ctx: [ctx.run.intervals_path], 20),
    Stage("experts", "elastic expert per interval", ("space", "experts"), _experts,
          lambda ctx: [ctx.run.experts_dir / "intervals.json"], 30),
    Stage("router", "Expert Routing Agent under each budget", ("sampling", "*"), _router,
          _allocations("router"), 40),
    Stage("search", "Optuna/Ray search of allocations", ("search", "evaluation"), _search,
          _allocations("search"), 50),
)

for _stage in METHOD_STAGES:
    register_stage(_stage)

load_plugins()
