"""``diffnas search``: Optuna studies of allocations under trajectory-MACs budgets, run by Ray Tune
(see :mod:`nas.search_run`). ``--synthetic`` swaps in a synthetic mixture space and objective: a
dry run of the cluster set-up (placement, GPUs, resume) that needs no model.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from nas.commands import register
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run import RunContext
from nas.search_run import SearchRunOptions, check_router_job, format_search_summary, search_run

__all__ = ["search_command"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search")
    group.add_argument(
        "--address", metavar="ADDR",
        help="join a running Ray cluster: 'auto' (from a node of it) or host:port "
        "(same as --set search.address=...); default: start a local Ray",
    )
    group.add_argument("--backend", choices=("ray", "local"), help="same as --set search.backend=...")
    group.add_argument(
        "--gpus-per-trial", type=float, metavar="N",
        help="GPUs per trial, fractions share a GPU (same as --set search.gpus_per_trial=...)",
    )
    group.add_argument(
        "--with-router", action="store_true",
        help="train the routing agent (the `route` command) as a Ray task beside the studies (Ray backend "
        "only); the search does not see its allocations unless search.seed_with_router=true, which runs a "
        "second search seeded with them (allocations/search_seeded-<budget>.json)",
    )
    dry = parser.add_argument_group("dry run (no model)")
    dry.add_argument(
        "--synthetic", action="store_true",
        help="search a synthetic 3-expert space with a synthetic objective: checks the cluster, GPU "
        "placement and resume; evaluations are logged to search/synthetic-evals.jsonl",
    )
    dry.add_argument("--synthetic-sleep", type=float, default=0.0, metavar="S",
                     help="seconds each synthetic evaluation takes (default 0)")
    dry.add_argument("--synthetic-fail", action="append", default=[], metavar="KEY",
                     help="architecture key whose synthetic evaluation raises (repeatable)")


def _search_config(cfg: ExperimentConfig, args: argparse.Namespace) -> ExperimentConfig:
    changes: dict[str, Any] = {}
    if args.address is not None:
        changes["address"] = args.address
    if args.backend is not None:
        changes["backend"] = args.backend
    if args.gpus_per_trial is not None:
        changes["gpus_per_trial"] = args.gpus_per_trial
    if not changes:
        return cfg
    try:
        return dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, **changes))
    except UserError as err:
        raise UserError(f"search option: {err}") from None


@register(
    "search",
    "search allocations with Optuna under MACs budgets (Ray Tune, resumable)",
    arguments=_arguments,
    description="Run one Optuna study per budget in search.budgets (or one multi-objective study), "
    "in parallel on a local Ray or a running cluster (--address auto). Re-running the same command "
    "resumes: evaluated architectures are kept and never evaluated twice. Writes "
    "allocations/search-<budget>.json, search/trials.csv, search/pareto-*.json, search/summary.json "
    "and one results.jsonl line per evaluation.",
)
def search_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    cfg = _search_config(cfg, args)
    if args.with_router:
        check_router_job(cfg)  # before any work
    ctx = RunContext(cfg)
    if not args.synthetic:
        ctx.check_experts()  # before prepare() writes config.yaml
    ctx.prepare(check_device=False)
    options = SearchRunOptions(with_router=args.with_router, synthetic=args.synthetic,
                               synthetic_sleep=args.synthetic_sleep, synthetic_fail=tuple(args.synthetic_fail))
    sys.stdout.write(format_search_summary(search_run(ctx, options)))
    return 0
