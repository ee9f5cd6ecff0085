"""Training the Expert Routing Agent on a run's experts, one allocation per budget: what
``diffnas route`` runs.

:func:`route` loads the base model (distillation teacher), the trained experts and the
training/held-out data of the run, builds :class:`router.mixture.MixtureRoutingLoss`, calls
:func:`router.train.train_router` and writes the outputs with :func:`router.output.write_outputs`:

- ``allocations/router-<budget>.json`` per budget (intervals, arch and MACs per expert, trajectory
  MACs, training seconds and evaluations, repair/fill/exchange steps in ``info``);
- ``router/train_log.jsonl``, ``router/summary.json``, ``router/allocation.png``.

With ``schedule.joint`` the steps are routed too (:func:`router.joint.route_joint`): the
budget-conditioned agent is trained on the expert widths over their whole range, then per
budget it is decoded for a bounded set of step schedules (at most
:attr:`router.joint.JointSettings.max_schedules`) and each candidate is scored once by the
run's trajectory proxy (``schedule.proxy``, :meth:`nas.run.RunContext.trajectory_proxy`); the
best is written with its schedule, its cost (training once, decodes, proxy evaluations and
seconds) in ``info``.

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

__all__ = ["ROUTER_JOB_FILE", "RouteOutcome", "format_route_summary", "route", "route_on_cluster", "route_side_job"]

#: where :func:`route_on_cluster` records the Ray task that trained the agent (in ``router/``)
ROUTER_JOB_FILE = "ray_job.json"


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
        joint: with ``schedule.joint``, one :class:`router.joint.JointOutcome` per budget
            (``result`` is then the :class:`router.train.FittedAgents` of the width agent).
    """

    up_to_date: bool
    result: Any = None
    space: Any = None
    sensitivity: Any = None
    paths: tuple[Path, ...] = ()
    skipped: tuple[str, ...] = field(default_factory=tuple)
    joint: tuple[Any, ...] = ()


def route(ctx: RunContext, force: bool = False) -> RouteOutcome:
    """Train the routing agent on the run's experts for every budget of ``router.budgets``.

    Raises:
        UserError: no trained experts, or every budget below the smallest mixture.
    """
    from router.output import write_outputs

    cfg, run, device = ctx.cfg, ctx.run, ctx.device
    r = cfg.router
    key = stage_key(cfg, "router")  # what the allocations depend on
    if cfg.schedule.joint:
        key = joint_key(cfg, key)
    if not force and _up_to_date(cfg, run, key):
        return RouteOutcome(True)
    if not ctx.has_experts():
        raise UserError(f"{run.experts_dir} has no trained experts; run `diffnas train-experts` first")
    seed = int(cfg.seed if r.seed is None else r.seed)
    loss, intervals, steps = _mixture_loss(ctx, seed)
    if cfg.schedule.joint:
        return _route_joint(ctx, loss, key, seed)
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


def _route_joint(ctx: RunContext, loss: Any, key: str, seed: int) -> RouteOutcome:
    """``schedule.joint``: train the width agent once, then per budget decode it for a bounded
    set of step schedules and score each candidate with the trajectory proxy
    (:func:`router.joint.route_joint`); write the best with its schedule."""
    from router.joint import JointSettings, joint_allocation, route_joint, smallest_trajectory_macs
    from router.output import write_allocation_files

    cfg, run, sc = ctx.cfg, ctx.run, ctx.cfg.schedule
    settings = _settings(cfg, seed)
    if not settings.budget_conditioned:
        raise UserError("schedule.joint routes with one budget-conditioned agent: set router.budget_conditioned: true")
    mixture, space = loss.mixture, loss.space
    allowed = ctx.step_counts()
    base = float(space.macs(space.full()))
    budgets, low, min_ratio, why = _split_budgets(
        cfg.router.budgets, smallest_trajectory_macs(mixture, allowed) / base,
        "below the cheapest joint trajectory (fewest steps, smallest experts)")
    fitted, sensitivity = _fit_width_agent(ctx, loss, settings)
    joint = JointSettings(max_steps=sc.steps_limit(cfg.sampling), spacings=tuple(sc.spacings),
                          base_choice=sc.base_choice, refine_evaluations=sc.refine_evaluations)
    log.info("joint routing: %d experts, steps per interval from %s, up to %d schedules per budget, budgets %s",
             mixture.num_experts, [list(a) for a in allowed], joint.max_schedules, budgets)
    try:
        outcomes = route_joint(next(iter(fitted.agents.values())), mixture, budgets, _proxy_scorer(ctx, loss), joint,
                               base_trajectory_macs=fitted.ref_macs, budget_range=fitted.budget_range,
                               allowed_counts=allowed)
    finally:
        loss.reset()
    extra = {"config_key": key, "sampler": cfg.sampling.sampler, "num_steps": cfg.sampling.num_steps,
             "expert_evaluations": loss.evaluations, "relaxed_calls": loss.relaxed_calls, "device": str(ctx.device),
             "proxy": sc.proxy, "proxy_images": sc.proxy_images, "budget_conditioned": True, **{
                 k: v for k, v in fitted.record.items() if isinstance(v, (int, float, str, bool, list))}}
    allocations = [joint_allocation(o, mixture, base_trajectory_macs=fitted.ref_macs,
                                    train_seconds=fitted.train_seconds, train_evaluations=fitted.evaluations,
                                    info=extra) for o in outcomes]
    summary = {"joint": True, "budget_conditioned": True, "train_seconds": fitted.train_seconds,
               "train_evaluations": fitted.evaluations, "settings": fitted.record,
               "sensitivity": [float(x) for x in sensitivity],
               "budgets": [{**a.info, "budget_ratio": a.budget_ratio, "achieved_ratio": a.achieved_ratio,
                            "steps_per_interval": list(a.steps_per_expert)} for a in allocations],
               "skipped_budgets": low, "min_ratio": min_ratio, "config_key": key}
    paths = write_allocation_files(allocations, mixture, run.router_dir, log_rows=fitted.rows, summary=summary,
                                   allocations_dir=run.allocations_dir, sensitivity=sensitivity,
                                   title="Joint router allocation: MACs per call per interval")
    return RouteOutcome(False, fitted, space, sensitivity, tuple(paths),
                        tuple(f"budget {b:g}: skipped, {why}" for b in low), joint=tuple(outcomes))


def _fit_width_agent(ctx: RunContext, loss: Any, settings: Any) -> tuple[Any, Any]:
    """The budget-conditioned width agent, trained over every width (from the smallest mixture
    to the full one: a schedule with fewer steps leaves a wider width budget); the experts are
    reset afterwards, also on failure."""
    import dataclasses

    from router.train import fit_agents

    space = loss.space
    width_min = space.macs(space.smallest()) / space.macs(space.full())
    settings = dataclasses.replace(settings, budget_range=(width_min, 1.0))
    return _then_reset(loss, lambda: fit_agents(space, loss, [width_min, 1.0], settings, device=ctx.device,
                                                arch_loss_fn=loss.arch_loss, progress=True))


def _proxy_scorer(ctx: RunContext, loss: Any) -> Any:
    """``scorer(schedule, archs)`` of :func:`router.joint.route_joint`: the run's trajectory
    proxy (``schedule.proxy``) of the mixture of the trained experts at ``archs``."""
    from experts.mixture import MixtureOfExperts
    from nas.run import proxy_quality
    from router.joint import CandidateScore

    proxy, kind = ctx.trajectory_proxy(), ctx.cfg.schedule.proxy

    def score(schedule: Any, archs: Any) -> CandidateScore:
        # an interval whose arch is None is served by the base model (JointSettings.base_choice)
        models = [ctx.base.unet if a is None else e for a, e in zip(archs, loss.experts)]
        p = proxy.score(MixtureOfExperts(loss.intervals, models, archs), schedule)
        return CandidateScore(proxy_quality(p, kind), p.to_dict())

    return score


def joint_key(cfg: ExperimentConfig, key: str) -> str:
    """The key of joint allocations: the router stage's ``key`` and the sections the trajectory
    proxy reads (``schedule``, ``evaluation``)."""
    import hashlib

    from nas.config import config_to_dict

    d = config_to_dict(cfg)
    blob = {"router": key, "schedule": d.get("schedule"), "evaluation": d.get("evaluation")}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def route_side_job(cfg: ExperimentConfig) -> dict[str, Any]:
    """:func:`route` on ``cfg`` as a job beside the search (on a Ray worker); returns what the
    search records of it."""
    ctx = RunContext(cfg)
    ctx.prepare()
    outcome = route(ctx)
    if not outcome.up_to_date:
        log.info("%s", format_route_summary(outcome).rstrip("\n"))
    return {"command": "route", "exit_status": 0}


def _route_task(cfg: ExperimentConfig, *, job: dict[str, Any]) -> dict[str, Any]:
    """Body of :func:`route_on_cluster`'s Ray task: :func:`route` on the device Ray assigned."""
    import dataclasses

    ctx = RunContext(dataclasses.replace(cfg, device=str(job["device"])), progress=False)
    ctx.prepare()
    outcome = route(ctx)
    if not outcome.up_to_date:
        log.info("%s", "\n".join([*outcome.skipped, format_route_summary(outcome).rstrip("\n")]))
    return {"up_to_date": outcome.up_to_date, "skipped": list(outcome.skipped)}


def route_on_cluster(ctx: RunContext) -> dict[str, Any]:
    """:func:`route` as one Ray task on the cluster of ``search.address`` (``diffnas run --address``).

    The task asks for ``search.cpus_per_trial`` CPUs and ``search.gpus_per_trial`` GPUs (1 when the
    cluster has GPUs and that is unset), reads and writes the run folder on the storage every node
    shares, and runs on the device Ray gave it. Where it ran (node, host, pid, device, seconds) is
    written to ``router/ray_job.json``; the same record is returned. Up-to-date allocations are kept
    as by :func:`route` (the task then returns at once).

    Raises:
        UserError: no node can hold the task, or the routing failed (its error, in one line).
    """
    from nas.ray_backend import ExpertTaskResources, TaskCall, run_tasks_ray
    from nas.search_objective import absolute_config

    s = ctx.cfg.search
    resources = ExpertTaskResources(cpus=float(s.cpus_per_trial or 1), gpus=s.gpus_per_trial, max_retries=1)
    rec = run_tasks_ray([TaskCall("router", _route_task, (absolute_config(ctx.cfg),))], s, resources,
                        name="diffnas-router")["router"]
    record = {k: rec[k] for k in ("node", "host", "pid", "device", "torch_threads", "task_wall_s")}
    record["up_to_date"] = bool(rec["result"]["up_to_date"])
    out = ctx.run.router_dir / ROUTER_JOB_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(out)
    log.info("router: trained in a Ray task on node %s (%s, %s) in %.1f s", str(record["node"])[:8],
             record["host"], record["device"], record["task_wall_s"])
    return record


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
    from experts.denoising import training_scheduler
    from experts.text_condition import PromptLabels
    from router.mixture import MixtureRoutingLoss

    cfg, run, device = ctx.cfg, ctx.run, ctx.device
    r = cfg.router
    base = ctx.base
    intervals, experts = ctx.experts()
    images, heldout = experts_data(cfg, run, base, intervals, device)
    steps = intervals.steps_per_interval(ctx.timesteps)
    kw = ({"encoder_hidden_states": base.encoder_hidden_states} if base.encoder_hidden_states is not None else None)
    loss = MixtureRoutingLoss(experts, intervals, steps, PromptLabels(base.unet),  # teacher: labels -> prompts
                              training_scheduler(base.scheduler_config),
                              images.to(device), heldout, batch_size=r.batch_size,
                              distill_weight=cfg.experts.distill_weight, model_kwargs=kw, seed=seed, device=device,
                              labels=ctx.train_condition().get("labels"))
    return loss, intervals, steps


def _feasible_budgets(space: Any, requested: Any) -> tuple[list[float], list[float], float, str]:
    """Split the budgets into those at or above the smallest mixture's MACs ratio and those below
    (warned about, or an error when none is left); returns both, that ratio and why the low ones
    are skipped."""
    min_macs_ratio = space.macs(space.smallest()) / space.macs(space.full())
    why = ("below the smallest mixture's MACs ratio {ratio:.3f} (space.width_fractions and space.depth "
           "set how small the experts can get)")
    return _split_budgets(requested, min_macs_ratio, why)


def _split_budgets(requested: Any, min_ratio: float, why: str) -> tuple[list[float], list[float], float, str]:
    """:func:`_feasible_budgets` for a given lowest ratio; ``why`` may name it as ``{ratio}``."""
    budgets = [b for b in requested if b >= min_ratio]
    low = [b for b in requested if b < min_ratio]
    why = why.format(ratio=min_ratio) if "{ratio" in why else f"{why} (MACs ratio {min_ratio:.3f})"
    if not budgets:
        raise UserError(f"router.budgets {low} are all {why}")
    for b in low:
        log.warning("budget %g is %s: no router allocation is written for it", b, why)
    return budgets, low, min_ratio, why


def _train(cfg: ExperimentConfig, space: Any, loss: Any, budgets: list[float], seed: int,
           device: Any) -> tuple[Any, Any]:
    """Train the routing agent per ``router.*``; returns the result and the interval sensitivity.
    The experts are reset afterwards, also on failure."""
    from router.train import train_router

    settings = _settings(cfg, seed)
    return _then_reset(loss, lambda: train_router(space, loss, budgets, settings, device=device,
                                                  arch_loss_fn=loss.arch_loss, progress=True))


def _then_reset(loss: Any, train: Any) -> tuple[Any, Any]:
    """``(train(), loss.sensitivity())``, the experts reset afterwards, also on failure."""
    try:
        result = train()
        sensitivity = loss.sensitivity()
    finally:
        loss.reset()
    return result, sensitivity


def _settings(cfg: ExperimentConfig, seed: int) -> Any:
    """The :class:`router.RouterSettings` of ``router.*``."""
    from router import RouterSettings

    r = cfg.router
    return RouterSettings(
        steps=r.steps, lr=r.learning_rate, seed=seed, budget_conditioned=r.budget_conditioned,
        budgets_per_step=r.budgets_per_step, resource_mode=r.resource_mode, resource_weight=r.resource_weight,
        tau_start=r.tau_start, tau_end=r.tau_end, hidden_size=r.hidden_size, repair_score=r.repair_score,
        fill=r.fill, exchange=r.exchange,
    )


def format_route_summary(outcome: RouteOutcome) -> str:
    """Plain-text summary of a trained router (what ``diffnas route`` prints after training)."""
    if outcome.joint:
        return _format_joint_summary(outcome)
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
            f"budget {o.budget_ratio:g}: trajectory MACs ratio {o.achieved_ratio:.4f} "
            f"({result.settings.get('decode', 'argmax')} decode {o.decoded_ratio:.4f}, held-out loss "
            f"{o.decoded_task_loss:.5g}; repair {o.repair_steps} / fill {o.fill_steps} / exchange {o.exchange_steps} "
            f"steps, {o.evaluations} loss evaluations), held-out loss {o.task_loss:.5g}; MACs per expert / full: "
            + ", ".join(f"{p}={f:.3f}" for p, f in zip(parts, fr))
        )
    return "\n".join(lines) + "\n"


def _format_joint_summary(outcome: RouteOutcome) -> str:
    """:func:`format_route_summary` of a joint routing (steps and experts)."""
    fitted = outcome.result
    lines = [f"router (joint steps x experts): one budget-conditioned width agent, {fitted.train_seconds:.1f} s, "
             f"{fitted.evaluations} relaxed evaluations"]
    for o in outcome.joint:
        best = o.best
        ratio = best.macs / fitted.ref_macs
        lines.append(
            f"budget {o.budget_ratio:g}: trajectory MACs ratio {ratio:.4f}, steps per interval "
            f"{list(best.schedule.steps_per_interval)} ({', '.join(p.spacing for p in best.schedule.parts)}), "
            f"proxy {best.score.value:.4g}; {len(o.candidates)} of {o.schedules_considered} schedules scored "
            f"({o.evaluations} proxy evaluations, {o.proxy_seconds:.1f} s; {o.decodes} agent decodes)")
    return "\n".join(lines) + "\n"
