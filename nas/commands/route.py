"""``diffnas route``: train the Expert Routing Agent on a run's experts; one allocation per budget
(see :mod:`nas.routing`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from nas.commands import register
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.routing import format_route_summary, route
from nas.run import RunContext

__all__ = ["route_command"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budgets", type=float, nargs="+", metavar="P",
                        help="budgets as fractions of the base trajectory MACs (same as --set router.budgets=[...])")
    parser.add_argument("--separate", action="store_true",
                        help="one agent per budget instead of one budget-conditioned agent "
                        "(same as --set router.budget_conditioned=false)")
    parser.add_argument("--force", action="store_true", help="train again even if the allocations are up to date")


def _route_config(cfg: ExperimentConfig, args: argparse.Namespace) -> ExperimentConfig:
    changes: dict[str, Any] = {}
    if getattr(args, "budgets", None):
        changes["budgets"] = tuple(float(b) for b in args.budgets)
    if getattr(args, "separate", False):
        changes["budget_conditioned"] = False
    if not changes:
        return cfg
    try:
        router = dataclasses.replace(cfg.router, **changes)
    except UserError as err:
        raise UserError(str(err).replace("config key 'budgets'", "config key 'router.budgets'")) from None
    return dataclasses.replace(cfg, router=router)


@register(
    "route",
    "train the Expert Routing Agent on the run's experts; write allocations/router-<budget>.json",
    arguments=_arguments,
    description="Train the routing agent (a GRU over every elastic dimension of every interval expert, "
    "straight-through Gumbel-softmax) end to end through the frozen experts: mixture denoising loss + "
    "distillation from the base model + a resource loss pulling the trajectory MACs to each budget in "
    "router.budgets. By default one budget-conditioned agent learns every budget in one run "
    "(--separate: one agent per budget). The exported allocation never exceeds its budget (bounded "
    "greedy repair, then fill/exchange to use the slack, scored on the held-out set). Writes "
    "allocations/router-<budget>.json and router/{train_log.jsonl,summary.json,allocation.png}.",
)
def route_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    cfg = _route_config(cfg, args)
    ctx = RunContext(cfg)
    ctx.check_experts()  # before prepare() writes config.yaml
    run = ctx.prepare()
    outcome = route(ctx, force=bool(getattr(args, "force", False)))
    if outcome.up_to_date:
        sys.stdout.write(f"router allocations for budgets {list(cfg.router.budgets)} are up to date in "
                         f"{run.allocations_dir} (--force to train again)\n")
        return 0
    sys.stdout.write("".join(line + "\n" for line in outcome.skipped))
    sys.stdout.write(format_route_summary(outcome))
    sys.stdout.write(f"wrote {', '.join(str(p) for p in outcome.paths)}; log, summary and plot in {run.router_dir}\n")
    return 0
