"""Training the Expert Routing Agent on a run's experts, one allocation per budget: what
``diffnas route`` runs.

:func:`route` loads the base model (distillation teacher), the trained experts and the
training/held-out data of the run, builds :class:`router.mixture.MixtureRoutingLoss`, calls
:func:`router.train.train_router` and writes the outputs with :func:`router.output.write_outputs`:

- ``allocations/router-<budget>.json`` per budget (intervals, arch and MACs per expert, trajectory
  MACs, training seconds and evaluations, repair/fill/exchange steps in ``info``);
- ``router/train_log.jsonl``, ``router/summary.json``, ``router/allocation.png``.

Budgets are fractions of the base model's trajectory MACs under ``sampling.sampler`` /
``sampling.num_steps`` (each expert weighted by the sampling steps it serves). A rerun with the
same config reuses the written allocations (``force`` trains again). A budget below the smallest
mixture's MACs ratio is skipped with a warning (no allocation for it); if all are, it is an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run import RunContext, experts_data, stage_key

log = logging.getLogger(__name__)

__all__ = ["RouteOutcome", "format_route_summary", "route", "route_side_job"]


@dataclass(frozen=True)
class RouteOutcome:
    """What :func:`route` did.

    Attributes:
        up_to_date: the stored allocations were kept (nothing was trained).
        result: :class:`router.train.RouterResult` (None when up to date).
        space: the mixture space routed over (None when up to date).
        sensitivity: held-out loss smallest - full per interval (None when up to date).
        paths: the allocation files written.
        skipped: one line per budget below the smallest mixture (no allocation for it).
    """

    up_to_date: bool
    result: Any = None
    space: Any = None
    sensitivity: Any = None
    paths: tuple[Path, ...] = ()
    skipped: tuple[str, ...] = field(default_factory=tuple)


def route(ctx: RunContext, force: bool = False) -> RouteOutcome:
    """Train the routing agent on the run's experts for every budget of ``router.budgets``.

    Raises:
        UserError: no trained experts, or every budget below the smallest mixture.
    """
    from router.output import write_outputs

    cfg, run, device = ctx.cfg, ctx.run, ctx.device
    r = cfg.router
    key = stage_key(cfg, "router")  # what the allocations depend on
    if not force and _up_to_date(cfg, run, key):
        return RouteOutcome(True)
    if not ctx.has_experts():
        raise UserError(f"{run.experts_dir} has no trained experts; run `diffnas train-experts` first")
    seed = int(cfg.seed if r.seed is None else r.seed)
    loss, intervals, steps = _mixture_loss(ctx, seed)
    space = loss.space
    budgets, low, min_macs_ratio, why = _feasible_budgets(space, r.budgets)
    log.info("routing %d experts (%d elastic dimensions, steps per interval %s) for budgets %s on %s",
             intervals.num_intervals, len(space.free_names()), steps, budgets, device)
    result, sensitivity = _train(cfg, space, loss, budgets, seed, device)
    extra = {"config_key": key, "sampler": cfg.sampling.sampler, "num_steps": cfg.sampling.num_steps,
             "expert_evaluations": loss.evaluations, "relaxed_calls": loss.relaxed_calls, "device": str(device)}
    paths = write_outputs(result, loss.mixture, run.router_dir, allocations_dir=run.allocations_dir,
                          sensitivity=sensitivity, extra_info=extra,
                          summary_extra={"skipped_budgets": low, "min_ratio": min_macs_ratio, "config_key": key})
    return RouteOutcome(False, result, space, sensitivity, tuple(paths),
                        tuple(f"budget {b:g}: skipped, {why}" for b in low))


def route_side_job(cfg: ExperimentConfig) -> dict[str, Any]:
    """:func:`route` on ``cfg`` as a job beside the search (on a Ray worker); returns what the
    search records of it."""
    ctx = RunContext(cfg)
    ctx.prepare()
    outcome = route(ctx)
    if not outcome.up_to_date:
        log.info("%s", format_route_summary(outcome).rstrip("\n"))
    return {"command": "route", "exit_status": 0}


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


def _mixture_loss(ctx: RunContext, seed: int) -> tuple[Any, Any, Any]:
    """Load the base model (teacher), the trained experts and the run's data; returns the
    :class:`router.mixture.MixtureRoutingLoss`, the intervals and the sampling steps per interval."""
    from experts.losses import training_scheduler
    from router.mixture import MixtureRoutingLoss

    cfg, run, device = ctx.cfg, ctx.run, ctx.device
    r = cfg.router
    base = ctx.base
    intervals, experts = ctx.experts()
    images, heldout = experts_data(cfg, run, base, intervals, device)
    steps = intervals.steps_per_interval(ctx.timesteps)
    kw = ({"encoder_hidden_states": base.encoder_hidden_states} if base.encoder_hidden_states is not None else None)
    loss = MixtureRoutingLoss(experts, intervals, steps, base.unet, training_scheduler(base.scheduler_config),
                              images.to(device), heldout, batch_size=r.batch_size,
                              distill_weight=cfg.experts.distill_weight, model_kwargs=kw, seed=seed, device=device)
    return loss, intervals, steps


def _feasible_budgets(space: Any, requested: Any) -> tuple[list[float], list[float], float, str]:
    """Split the budgets into those at or above the smallest mixture's MACs ratio and those below
    (warned about, or an error when none is left); returns both, that ratio and why the low ones
    are skipped."""
    min_macs_ratio = space.macs(space.smallest()) / space.macs(space.full())
    budgets = [b for b in requested if b >= min_macs_ratio]
    low = [b for b in requested if b < min_macs_ratio]
    why = (f"below the smallest mixture's MACs ratio {min_macs_ratio:.3f} (space.width_fractions and space.depth "
           "set how small the experts can get)")
    if not budgets:
        raise UserError(f"router.budgets {low} are all {why}")
    for b in low:
        log.warning("budget %g is %s: no router allocation is written for it", b, why)
    return budgets, low, min_macs_ratio, why


def _train(cfg: ExperimentConfig, space: Any, loss: Any, budgets: list[float], seed: int,
           device: Any) -> tuple[Any, Any]:
    """Train the routing agent per ``router.*``; returns the result and the interval sensitivity.
    The experts are reset afterwards, also on failure."""
    from router import RouterSettings
    from router.train import train_router

    r = cfg.router
    settings = RouterSettings(
        steps=r.steps, lr=r.learning_rate, seed=seed, budget_conditioned=r.budget_conditioned,
        budgets_per_step=r.budgets_per_step, resource_mode=r.resource_mode, resource_weight=r.resource_weight,
        tau_start=r.tau_start, tau_end=r.tau_end, hidden_size=r.hidden_size, repair_score=r.repair_score,
        fill=r.fill, exchange=r.exchange,
    )
    try:
        result = train_router(space, loss, budgets, settings, device=device, arch_loss_fn=loss.arch_loss,
                              progress=True)
        sensitivity = loss.sensitivity()
    finally:
        loss.reset()
    return result, sensitivity


def format_route_summary(outcome: RouteOutcome) -> str:
    """Plain-text summary of a trained router (what ``diffnas route`` prints after training)."""
    result, space, sensitivity = outcome.result, outcome.space, outcome.sensitivity
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
