"""``diffnas route``: train the Expert Routing Agent on a run's experts; one allocation per budget.

Thin: resolve ``router.*``, load the base model (distillation teacher), the trained experts and
the training/held-out data of the run, build :class:`router.mixture.MixtureRoutingLoss`, call
:func:`router.train.train_router`, write the outputs with :func:`router.output.write_outputs`:

- ``allocations/router-<budget>.json`` per budget (intervals, arch and MACs per expert, trajectory
  MACs, training seconds and evaluations, repair/fill/exchange steps in ``info``);
- ``router/train_log.jsonl``, ``router/summary.json``, ``router/allocation.png``.

Budgets are fractions of the base model's trajectory MACs under ``sampling.sampler`` /
``sampling.num_steps`` (each expert weighted by the sampling steps it serves). A rerun with the
same config reuses the written allocations (``--force`` trains again). A budget below the smallest
mixture's MACs ratio is skipped with a warning (no allocation for it); if all are, it is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from nas.commands import register
from nas.config import ExperimentConfig
from nas.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["route"]


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


def _config_key(cfg: ExperimentConfig) -> str:
    """Hash of what the allocations depend on (the pipeline's key of the router stage)."""
    from nas.pipeline import stage_key

    return stage_key(cfg, "router")


def _up_to_date(cfg: ExperimentConfig, run: Any, key: str) -> bool:
    from experts.allocation import Allocation

    written = [b for b in cfg.router.budgets if (run.allocations_dir / f"router-{b:g}.json").is_file()]
    summary = run.router_dir / "summary.json"
    if not written or not summary.is_file():
        return False
    try:
        skipped = json.loads(summary.read_text()).get("skipped_budgets", [])
    except (OSError, json.JSONDecodeError):
        return False
    for b in cfg.router.budgets:
        if b in skipped:
            continue
        path = run.allocations_dir / f"router-{b:g}.json"
        if not path.is_file():
            return False
        try:
            if Allocation.load(path).info.get("config_key") != key:
                return False
        except (ValueError, KeyError, json.JSONDecodeError):
            return False
    return True


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
def route(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from nas.commands.base import prepare_run
    from nas.device import resolve_device

    cfg = _route_config(cfg, args)
    r = cfg.router
    device = resolve_device(cfg.device)
    run = prepare_run(cfg)
    key = _config_key(cfg)
    if not getattr(args, "force", False) and _up_to_date(cfg, run, key):
        sys.stdout.write(f"router allocations for budgets {list(r.budgets)} are up to date in {run.allocations_dir} "
                         "(--force to train again)\n")
        return 0
    if not (run.experts_dir / "intervals.json").is_file():
        raise UserError(f"{run.experts_dir} has no trained experts; run `diffnas train-experts` first")

    from router.output import write_outputs

    seed = int(cfg.seed if r.seed is None else r.seed)
    loss, intervals, steps = _mixture_loss(cfg, run, device, seed)
    space = loss.space
    budgets, low, min_macs_ratio = _feasible_budgets(space, r.budgets)
    log.info("routing %d experts (%d elastic dimensions, steps per interval %s) for budgets %s on %s",
             intervals.num_intervals, len(space.free_names()), steps, budgets, device)
    result, sensitivity = _train(cfg, space, loss, budgets, seed, device)
    extra = {"config_key": key, "sampler": cfg.sampling.sampler, "num_steps": cfg.sampling.num_steps,
             "expert_evaluations": loss.evaluations, "relaxed_calls": loss.relaxed_calls, "device": str(device)}
    paths = write_outputs(result, space, intervals, run.router_dir, allocations_dir=run.allocations_dir,
                          sensitivity=sensitivity, extra_info=extra,
                          summary_extra={"skipped_budgets": low, "min_ratio": min_macs_ratio, "config_key": key})
    sys.stdout.write(format_route_summary(result, space, sensitivity))
    sys.stdout.write(f"wrote {', '.join(str(p) for p in paths)}; log, summary and plot in {run.router_dir}\n")
    return 0


def _mixture_loss(cfg: ExperimentConfig, run: Any, device: Any, seed: int) -> tuple[Any, Any, Any]:
    """Load the base model (teacher), the trained experts and the run's data; returns the
    :class:`router.mixture.MixtureRoutingLoss`, the intervals and the sampling steps per interval."""
    from experts.losses import training_scheduler
    from experts.training import load_experts
    from nas.commands.base import load_base
    from nas.commands.experts import experts_data
    from nas.sampling import make_scheduler, sampling_timesteps
    from router.mixture import MixtureRoutingLoss

    r = cfg.router
    base = load_base(cfg, run, device, progress=False)
    intervals, experts = load_experts(run.experts_dir, device=device)
    images, heldout = experts_data(cfg, run, base, intervals, device)
    timesteps = sampling_timesteps(make_scheduler(cfg.sampling.sampler, base.scheduler_config), cfg.sampling.num_steps)
    steps = intervals.steps_per_interval(timesteps)
    kw = ({"encoder_hidden_states": base.encoder_hidden_states} if base.encoder_hidden_states is not None else None)
    loss = MixtureRoutingLoss(experts, intervals, steps, base.unet, training_scheduler(base.scheduler_config),
                              images.to(device), heldout, batch_size=r.batch_size,
                              distill_weight=cfg.experts.distill_weight, model_kwargs=kw, seed=seed, device=device)
    return loss, intervals, steps


def _feasible_budgets(space: Any, requested: Any) -> tuple[list[float], list[float], float]:
    """Split the budgets into those at or above the smallest mixture's MACs ratio and those below
    (warned about and reported, or an error when none is left); returns both and that ratio."""
    min_macs_ratio = space.macs(space.smallest()) / space.macs(space.full())
    budgets = [b for b in requested if b >= min_macs_ratio]
    low = [b for b in requested if b < min_macs_ratio]
    why = (f"below the smallest mixture's MACs ratio {min_macs_ratio:.3f} (space.width_fractions and space.depth "
           "set how small the experts can get)")
    if not budgets:
        raise UserError(f"router.budgets {low} are all {why}")
    for b in low:
        log.warning("budget %g is %s: no router allocation is written for it", b, why)
        sys.stdout.write(f"budget {b:g}: skipped, {why}\n")
    return budgets, low, min_macs_ratio


def _train(cfg: ExperimentConfig, space: Any, loss: Any, budgets: list[float], seed: int,
           device: Any) -> tuple[Any, Any]:
    """Train the routing agent per ``router.*``; returns the result and the interval sensitivity.
    The experts are reset afterwards, also on failure."""
    from router.train import train_router

    r = cfg.router
    try:
        result = train_router(
            space, loss, budgets, steps=r.steps, lr=r.learning_rate, seed=seed,
            budget_conditioned=r.budget_conditioned, budgets_per_step=r.budgets_per_step,
            resource_mode=r.resource_mode, resource_weight=r.resource_weight, tau_start=r.tau_start,
            tau_end=r.tau_end, hidden_size=r.hidden_size, device=device, arch_loss_fn=loss.arch_loss,
            repair_score=r.repair_score, fill=r.fill, exchange=r.exchange, progress=True,
        )
        sensitivity = loss.sensitivity()
    finally:
        loss.reset()
    return result, sensitivity


def format_route_summary(result: Any, space: Any, sensitivity: Any) -> str:
    """Plain-text summary (what ``diffnas route`` prints)."""
    parts = list(space.parts)
    lines = [f"router: {'one budget-conditioned agent' if result.budget_conditioned else 'one agent per budget'}, "
             f"{result.train_seconds:.1f} s, {result.train_evaluations} relaxed evaluations"]
    lines.append("interval sensitivity (held-out loss smallest - full): "
                 + ", ".join(f"{p}={s:.4g}" for p, s in zip(parts, sensitivity)))
    for o in result.outcomes:
        per = space.split(o.arch)
        fr = [space.parts[p].macs(per[p]) / space.parts[p].macs(space.parts[p].full()) for p in parts]
        lines.append(
            f"budget {o.budget_ratio:g}: trajectory MACs ratio {o.achieved_ratio:.4f} (decode {o.decoded_ratio:.4f}, "
            f"repair {o.repair_steps} / fill {o.fill_steps} / exchange {o.exchange_steps} steps, "
            f"{o.evaluations} loss evaluations), held-out loss {o.task_loss:.5g}; MACs per expert / full: "
            + ", ".join(f"{p}={f:.3f}" for p, f in zip(parts, fr))
        )
    return "\n".join(lines) + "\n"
