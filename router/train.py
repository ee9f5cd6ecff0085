"""Training the Expert Routing Agent, decoding, and the feasibility repair.

:func:`train_router` trains either one agent per target budget, or one *budget-conditioned*
agent that samples a batch of budgets every step and learns them all in one run. After
training, each budget is decoded deterministically (argmax), then made feasible and tight:

1. **repair** (only when the decode is over budget): repeatedly move one free dimension to a
   smaller choice (any smaller choice, so a loss curve that is concave in MACs is handled),
   picking the move with the least task-loss increase per MAC saved, until the trajectory
   MACs fit the budget; once some move fits the budget at once, the least-loss such move;
2. **fill** (optional, on by default): while some move of one dimension to a larger choice
   still fits the budget and lowers the loss, take the one with the largest task-loss
   decrease per MAC spent; when none fits, **exchange** one dimension down and another up
   if that fits and lowers the loss.

All loops are bounded by the number of choice steps in the space. The exported arch never
exceeds the budget; the number of repair/fill/exchange steps and loss evaluations is
recorded.

Example:
    >>> from router.synthetic import SyntheticMixture
    >>> bench = SyntheticMixture.default(seed=0)
    >>> res = train_router(bench.space, bench.task_loss, [0.5], steps=50, seed=0)
    >>> out = res.outcome(0.5)
    >>> out.macs <= 0.5 * bench.base_macs
    True

Modules (every name is still importable from ``router.train``):

- :mod:`router.train` (here): :func:`train_router`, training then one decode per budget;
- :mod:`router.loop`: the optimisation loop of one agent (``_train_one``, ``_tau``);
- :mod:`router.feasibility`: :func:`make_feasible` (repair, fill, exchange) and ``_calibrate``;
- :mod:`router.result`: the output records :class:`BudgetOutcome` and :class:`RouterResult`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from router.agent import ExpertRoutingAgent, one_hot_weights
from router.feasibility import ArchLoss, _calibrate, _free_indices, _moves, make_feasible  # noqa: F401
from router.loop import _tau, _train_one  # noqa: F401
from router.objective import RESOURCE_MODES, BatchedTaskLoss, RouterObjective, TaskLoss
from router.result import BudgetOutcome, RouterResult
from search_spaces import Arch, SearchSpace
from search_spaces.errors import UserError

__all__ = ["BudgetOutcome", "RouterResult", "make_feasible", "train_router"]

log = logging.getLogger(__name__)


def train_router(
    space: SearchSpace,
    task_loss_fn: TaskLoss,
    budgets: Sequence[float],
    *,
    batched_task_loss: BatchedTaskLoss | None = None,
    steps: int = 400,
    lr: float = 0.1,
    net_lr_scale: float = 0.01,
    seed: int = 0,
    budget_conditioned: bool = False,
    budget_range: tuple[float, float] | None = None,
    budgets_per_step: int = 8,
    resource_mode: str = "lagrangian",
    resource_weight: float = 10.0,
    scale_resource_weight: bool = True,
    dual_lr: float = 0.05,
    dual_on_decode: bool = False,
    tau_start: float = 5.0,
    tau_end: float = 1.0,
    hidden_size: int = 64,
    embed_size: int = 32,
    device: str | torch.device = "cpu",
    arch_loss_fn: ArchLoss | None = None,
    repair_score: str = "loss",
    calibrate: bool = True,
    fill: bool = True,
    exchange: bool = True,
    base_macs: float | None = None,
    log_every: int = 10,
    joint_parameters: Sequence[torch.nn.Parameter] = (),
    joint_lr: float = 1e-5,
    progress: bool = False,
) -> RouterResult:
    """Train routing agent(s) and return a feasible arch per budget.

    Args:
        space: the search space (a ``ProductSpace`` over experts for a mixture).
        task_loss_fn: ``task_loss_fn(weights) -> scalar Tensor``; ``weights`` maps every free
            dimension name to a ``(n_choices,)`` straight-through one-hot on ``device``.
        budgets: target MACs ratios in (0, 1] to export.
        batched_task_loss: optional fast path ``f(w) -> (B,)`` on padded weights ``(B, T, C)``
            (see :class:`RouterObjective`); ``task_loss_fn`` is still used for scoring archs.
        steps: optimiser steps (per agent when not budget-conditioned).
        lr: Adam learning rate of the agent's per-token logit table and price (cosine-annealed).
        net_lr_scale: the GRU/embedding/head parameters use ``lr * net_lr_scale``.
        seed: seeds the agent's initialisation and the Gumbel noise.
        budget_conditioned: train one agent over a range of budgets instead of one per budget.
        budget_range: ``(low, high)`` range sampled log-uniformly by the conditioned agent
            (default: the budgets' range widened by 10%, clipped to (0, 1]).
        budgets_per_step: budgets sampled per step by the conditioned agent (a fixed-budget
            agent draws this many Gumbel samples of its one budget instead).
        resource_mode: ``"lagrangian"`` (default: multiplier by dual ascent plus a quadratic
            term on ``log r - log p``) or ``"log_ratio"`` (fixed penalty
            ``resource_weight * log(max(r,p)/min(r,p))``); see :class:`RouterObjective`.
        resource_weight: weight of the resource term; in ``log_ratio`` mode it must exceed the
            task loss's marginal value of compute (d loss / d log MACs) for the optimum to
            sit on the budget.
        dual_lr: dual ascent step of the lagrangian multiplier (fraction of resource_weight).
        dual_on_decode: the dual ascent follows the MACs ratio of the agent's deterministic
            decode (argmax) rather than of the random samples, so the budget is met by what is
            exported (MACs only, no task-loss evaluations).
        scale_resource_weight: multiply ``resource_weight`` by the task loss's mean slope
            ``(loss(smallest) - loss(full)) / log(macs(full) / macs(smallest))`` (two loss
            evaluations before training), so the default works whatever the loss's units.
        tau_start, tau_end: Gumbel-softmax temperature, annealed geometrically (with a hard
            straight-through sample it shapes the gradient only).
        device: where the agent and the relaxed weights live.
        arch_loss_fn: scores discrete archs for repair/fill (default: ``task_loss_fn`` on
            exact one-hots, without gradients).
        calibrate: budget-conditioned agent only: before repair, bisect the budget given to the
            agent (within its training range, MACs only, no loss evaluations) for the largest
            decode that fits the target.
        repair_score: ``"loss"`` (use ``arch_loss_fn``) or ``"logits"`` (minus the agent's
            log-probability of the arch: no model evaluations, for expensive task losses).
        fill: spend leftover budget greedily after decoding.
        exchange: after filling, try one-down-one-up exchanges (see :func:`make_feasible`).
        base_macs: MACs meaning ratio 1 (default: the full arch's).
        log_every: training-log row every this many steps.
        joint_parameters: parameters trained together with the agent by the same loss (e.g.
            the experts' weights, ``MixtureRoutingLoss(..., joint=True).parameters()``);
            empty (default): experts frozen.
        joint_lr: Adam rate of ``joint_parameters``.
        progress: show a progress bar per agent.

    Returns:
        A :class:`RouterResult`; every outcome satisfies ``macs <= budget * base_macs``.
    """
    budgets = [float(b) for b in budgets]
    if not budgets:
        raise UserError("train_router needs at least one budget")
    for b in budgets:
        if not 0 < b <= 1:
            raise UserError(f"budget ratios must be in (0, 1], got {b}")
    if steps < 0 or budgets_per_step < 1 or log_every < 1:
        raise UserError("steps must be >= 0, budgets_per_step >= 1 and log_every >= 1")
    if repair_score not in ("loss", "logits"):
        raise UserError(f"repair_score must be 'loss' or 'logits', got {repair_score!r}")
    device = torch.device(device)
    joint = list(joint_parameters)

    def default_arch_loss(arch: Arch) -> float:
        with torch.no_grad():
            return float(task_loss_fn(one_hot_weights(space, arch, device)))

    eval_fn = arch_loss_fn or default_arch_loss
    loss_scale = _loss_scale(space, eval_fn) if scale_resource_weight else 1.0
    ref_macs = float(space.macs(space.full()) if base_macs is None else base_macs)
    min_ratio = space.macs(space.smallest()) / ref_macs
    for b in budgets:
        if b < min_ratio - 1e-12:
            raise UserError(f"budget {b} is below the smallest arch's MACs ratio {min_ratio:.4f}")
    if resource_mode not in RESOURCE_MODES:
        raise UserError(f"resource_mode must be one of {RESOURCE_MODES}, got {resource_mode!r}")

    def make_objective(lo: float, hi: float) -> RouterObjective:
        return RouterObjective(space, task_loss_fn, batched_task_loss=batched_task_loss, mode=resource_mode, resource_weight=resource_weight * loss_scale,
                               base_macs=ref_macs, budget_range=(lo, hi), multiplier_init=loss_scale,
                               dual_lr=dual_lr)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    evaluations = 0
    agent_kw = dict(hidden_size=hidden_size, embed_size=embed_size, seed=int(seed))

    if budget_conditioned:
        lo, hi = budget_range if budget_range is not None else (min(budgets) / 1.1, min(1.0, max(budgets) * 1.1))
        lo = max(lo, min_ratio)
        if not 0 < lo <= hi <= 1:
            raise UserError(f"budget_range must satisfy 0 < low <= high <= 1, got ({lo}, {hi})")
        llo, lhi = math.log(lo), math.log(hi)

        def sampler(g: torch.Generator) -> list[float]:
            u = torch.rand(budgets_per_step, generator=g, device=device).tolist()
            return [math.exp(llo + x * (lhi - llo)) for x in u]

        agent = ExpertRoutingAgent(space, budget_conditioned=True, **agent_kw).to(device)
        objective = make_objective(lo, hi)
        evaluations += _train_one(agent, objective, sampler, steps=steps, lr=lr, tau_start=tau_start,
                                  tau_end=tau_end, net_lr_scale=net_lr_scale, dual_on_decode=dual_on_decode, generator=gen,
                                  log_every=log_every, tag="conditioned", rows=rows, progress=progress,
                                  joint=joint, joint_lr=joint_lr)
        multipliers = {"conditioned": objective.multipliers()}
        agents = {b: agent for b in budgets}
        settings_range = [lo, hi]
    else:
        agents = {}
        multipliers = {}
        for b in budgets:
            agent = ExpertRoutingAgent(space, budget_conditioned=False, **agent_kw).to(device)
            objective = make_objective(b, b)
            evaluations += _train_one(agent, objective, lambda g, b=b: [b] * budgets_per_step, steps=steps,
                                      lr=lr, tau_start=tau_start, tau_end=tau_end, net_lr_scale=net_lr_scale, dual_on_decode=dual_on_decode,
                                      generator=gen, log_every=log_every, tag=f"budget={b:g}", rows=rows,
                                      progress=progress, joint=joint, joint_lr=joint_lr)
            agents[b] = agent
            multipliers[f"budget={b:g}"] = objective.multipliers()
        settings_range = None
    train_seconds = time.perf_counter() - t0

    outcomes = []
    for b in budgets:
        outcomes.append(_export_budget(space, agents[b], b, ref_macs=ref_macs, calibrate=budget_conditioned and calibrate,
                                       budget_range=settings_range, repair_score=repair_score, eval_fn=eval_fn,
                                       fill=fill, exchange=exchange))
    settings = {
        "steps": steps, "lr": lr, "seed": seed, "budgets_per_step": budgets_per_step,
        "resource_mode": resource_mode, "resource_weight": resource_weight, "loss_scale": loss_scale,
        "effective_resource_weight": resource_weight * loss_scale, "dual_lr": dual_lr, "dual_on_decode": dual_on_decode,
        "net_lr_scale": net_lr_scale, "tau_start": tau_start, "tau_end": tau_end,
        "hidden_size": hidden_size, "repair_score": repair_score, "fill": fill, "exchange": exchange, "joint": bool(joint),
    }
    if settings_range is not None:
        settings["budget_range"] = settings_range
    settings["multipliers"] = {k: [[round(a, 6), b] for a, b in v] for k, v in multipliers.items()}
    uniq = tuple(dict.fromkeys(agents.values()))
    return RouterResult(tuple(outcomes), tuple(rows), uniq, bool(budget_conditioned), train_seconds,
                        evaluations, ref_macs, settings)


def _loss_scale(space: SearchSpace, eval_fn: ArchLoss) -> float:
    """The task loss's mean slope ``(loss(smallest) - loss(full)) / log(macs(full) / macs(smallest))``.

    1.0 when the loss does not grow when shrinking (two loss evaluations).
    """
    full, small = space.full(), space.smallest()
    log_span = math.log(space.macs(full) / max(space.macs(small), 1e-12))
    loss_scale = (eval_fn(small) - eval_fn(full)) / max(log_span, 1e-12)
    if not loss_scale > 0:  # the loss does not grow when shrinking: keep units as given
        loss_scale = 1.0
    return loss_scale


def _export_budget(
    space: SearchSpace,
    agent: ExpertRoutingAgent,
    b: float,
    *,
    ref_macs: float,
    calibrate: bool,
    budget_range: Sequence[float] | None,
    repair_score: str,
    eval_fn: ArchLoss,
    fill: bool,
    exchange: bool,
) -> BudgetOutcome:
    """Decode one budget ``b`` after training: (calibrate,) repair, fill, exchange; timed and logged."""
    t_decode = time.perf_counter()
    agent.eval()
    decoded = agent.decode(b)
    agent_input = b
    if calibrate:
        agent_input, decoded = _calibrate(space, agent, b, b * ref_macs, budget_range)
    if repair_score == "logits":
        lp = agent.log_probs(b)

        def scorer(a: Arch, lp: Mapping[str, list[float]] = lp) -> float:
            return -sum(lp[d.name][d.index(a[d.name])] for d in space.free_dimensions())
    else:
        scorer = eval_fn
    arch, n_rep, n_fill, n_exch, n_eval = make_feasible(space, decoded, b * ref_macs, scorer, fill=fill,
                                                        exchange=exchange)
    m = space.macs(arch)
    task = float(eval_fn(arch))
    dec_task = float(eval_fn(decoded))
    if repair_score != "loss":
        n_eval = 0  # the repair scored archs by the agent's log-probabilities only
    outcome = BudgetOutcome(
        budget_ratio=b, arch=arch, decoded_arch=decoded, macs=m, achieved_ratio=m / ref_macs,
        decoded_ratio=space.macs(decoded) / ref_macs, agent_budget_ratio=agent_input, task_loss=task, decoded_task_loss=dec_task,
        repair_steps=n_rep, fill_steps=n_fill, exchange_steps=n_exch, evaluations=n_eval,
        decode_seconds=time.perf_counter() - t_decode,
    )
    log.info("router budget %.3f: decoded ratio %.4f -> %.4f after %d repair / %d fill / %d exchange steps",
             b, outcome.decoded_ratio, outcome.achieved_ratio, n_rep, n_fill, n_exch)
    return outcome
