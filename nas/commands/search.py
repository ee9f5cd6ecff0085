"""``diffnas search``: Optuna studies of allocations under trajectory-MACs budgets, run by Ray Tune.

Thin: resolve the config (``search.*`` keys, plus a few flags for the cluster), build the search
space and objective, call :func:`nas.search.run_search`, print a summary. ``--synthetic`` swaps
in a synthetic mixture space and objective: a dry run of the cluster set-up (placement, GPUs,
resume) that needs no model.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, Any

from nas.commands import register
from nas.config import ExperimentConfig
from nas.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from nas.rundir import RunDir
    from nas.search import SearchResult

log = logging.getLogger(__name__)

__all__ = ["format_search_summary", "search"]


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
        help="train the routing agent (the `route` command) as a Ray task beside the studies; when it "
        "finishes, its allocations are enqueued in the studies still searching (Ray backend only)",
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


def run_registered_command(cfg: ExperimentConfig, name: str) -> dict[str, Any]:
    """Run registered subcommand ``name`` on ``cfg`` (on a Ray worker, as a side job)."""
    from nas.cli import build_parser
    from nas.commands import all_commands

    commands = all_commands()
    if name not in commands:
        raise UserError(f"no `diffnas {name}` command in this version")
    args = build_parser().parse_args([name])
    return {"command": name, "exit_status": int(commands[name].func(cfg, args) or 0)}


def _router_job(cfg: ExperimentConfig) -> Any:
    """The routing agent's training as a side job of the search (needs the `route` command)."""
    import functools

    from nas.commands import all_commands
    from nas.ray_backend import SideJob
    from nas.search_objective import absolute_config

    if "route" not in all_commands():
        raise UserError("--with-router needs the routing agent's `diffnas route` command, which this version lacks")
    if cfg.search.backend != "ray":
        raise UserError("--with-router runs the router as a Ray task: it needs search.backend=ray")
    s = cfg.search
    return SideJob(functools.partial(run_registered_command, absolute_config(cfg), "route"),
                   num_cpus=s.cpus_per_trial or 1.0, num_gpus=None)


def _mixture_problem(cfg: ExperimentConfig, run: RunDir) -> tuple[Any, Any, Any]:
    """The real problem: the experts' mixture space, its proxy/FID objective and intervals."""
    from nas.device import resolve_device
    from nas.search_objective import mixture_problem

    problem = mixture_problem(cfg, run, device=str(resolve_device(cfg.device)))
    return problem.space, problem.objective, problem.intervals


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
def search(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from experts.intervals import Intervals
    from nas.commands.base import prepare_run
    from nas.search import SyntheticObjective, run_search, synthetic_mixture_space

    cfg = _search_config(cfg, args)
    if args.with_router:
        _router_job(cfg)  # fail before any work when it cannot run
    run = prepare_run(cfg)
    if args.synthetic:
        space = synthetic_mixture_space(num_experts=3)
        objective = SyntheticObjective(
            space, sleep_s=max(0.0, float(args.synthetic_sleep)), fail_keys=tuple(args.synthetic_fail),
            log_path=str((run.search_dir / "synthetic-evals.jsonl").resolve()),
        )
        intervals = Intervals.uniform(cfg.model.num_train_timesteps, 3)
    else:
        space, objective, intervals = _mixture_problem(cfg, run)
    device = "cpu"
    if cfg.search.backend == "local":
        from nas.device import resolve_device

        device = str(resolve_device(cfg.device))
    side_jobs = {"router": _router_job(cfg)} if args.with_router else None
    result = run_search(space, objective, cfg.search, run, intervals=intervals, seed=cfg.seed, device=device,
                        side_jobs=side_jobs)
    sys.stdout.write(format_search_summary(result))
    return 0
