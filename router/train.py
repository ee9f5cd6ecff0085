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

The settings are a :class:`~router.settings.RouterSettings`; the loop of one agent is
:func:`router.loop.train_agent`, the repair, fill and exchange :func:`router.feasibility.make_feasible`,
the records :class:`~router.result.BudgetOutcome` and :class:`~router.result.RouterResult`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from router.agent import ExpertRoutingAgent, one_hot_weights
from router.feasibility import ArchLoss, calibrate_budget, logit_scorer, make_feasible
from router.knapsack import ValueRecorder, bounded_repair, fit_values, knapsack_decode
from router.loop import BudgetSampler, train_agent
from router.objective import BatchedTaskLoss, RouterObjective, TaskLoss
from router.result import BudgetOutcome, RouterResult
from router.settings import RouterSettings
from search_spaces import Arch, SearchSpace
from search_spaces.errors import UserError

__all__ = ["FittedAgents", "fit_agents", "train_router"]

log = logging.getLogger(__name__)


def train_router(
    space: SearchSpace,
    task_loss_fn: TaskLoss,
    budgets: Sequence[float],
    settings: RouterSettings | None = None,
    *,
    batched_task_loss: BatchedTaskLoss | None = None,
    arch_loss_fn: ArchLoss | None = None,
    joint_parameters: Sequence[torch.nn.Parameter] = (),
    device: str | torch.device = "cpu",
    progress: bool = False,
    **overrides: Any,
) -> RouterResult:
    """Train routing agent(s) and return a feasible arch per budget.

    Args:
        space: the search space (a ``ProductSpace`` over experts for a mixture).
        task_loss_fn: ``task_loss_fn(weights) -> scalar Tensor``; ``weights`` maps every free
            dimension name to a ``(n_choices,)`` straight-through one-hot on ``device``.
        budgets: target MACs ratios in (0, 1] to export.
        settings: how to train and decode (default: ``RouterSettings()``).
        batched_task_loss: optional fast path ``f(w) -> (B,)`` on padded weights ``(B, T, C)``
            (see :class:`RouterObjective`); ``task_loss_fn`` is still used for scoring archs.
        arch_loss_fn: scores discrete archs for repair/fill (default: ``task_loss_fn`` on
            exact one-hots, without gradients).
        joint_parameters: parameters trained together with the agent by the same loss (e.g.
            the experts' weights, ``MixtureRoutingLoss(..., joint=True).parameters()``);
            empty (default): experts frozen.
        device: where the agent and the relaxed weights live.
        progress: show a progress bar per agent.
        **overrides: fields of :class:`RouterSettings` given as keywords
            (``train_router(space, loss, [0.5], steps=50)``), applied over ``settings``.

    Returns:
        A :class:`RouterResult`; every outcome satisfies ``macs <= budget * base_macs``.

    Raises:
        UserError: no budget, a budget outside (0, 1] or below the smallest arch, bad settings.
        TypeError: a keyword that is not a field of :class:`RouterSettings`.
    """
    s = _settings(settings, overrides)
    fitted = fit_agents(space, task_loss_fn, budgets, s, batched_task_loss=batched_task_loss,
                        arch_loss_fn=arch_loss_fn, joint_parameters=joint_parameters, device=device,
                        progress=progress)
    outcomes = [_export_budget(space, fitted.agents[b], b, ref_macs=fitted.ref_macs, settings=s,
                               budget_range=fitted.budget_range, eval_fn=fitted.eval_fn) for b in fitted.budgets]
    uniq = tuple(dict.fromkeys(fitted.agents.values()))
    return RouterResult(tuple(outcomes), fitted.rows, uniq, bool(s.budget_conditioned), fitted.train_seconds,
                        fitted.evaluations, fitted.ref_macs, fitted.record)


@dataclass(frozen=True)
class FittedAgents:
    """Trained agent(s) before any decode: what :func:`fit_agents` returns.

    Attributes:
        agents: the agent of each budget (one shared agent when budget-conditioned).
        budgets: the budgets, as checked floats.
        budget_range: the conditioned agent's training range ``[low, high]`` (None otherwise).
        eval_fn: the discrete-arch loss (``arch_loss_fn``, or the task loss on one-hots).
        ref_macs: the MACs meaning ratio 1.
        train_seconds: wall time of the training loop(s).
        evaluations: relaxed task-loss evaluations spent by training.
        rows: the training log.
        record: the settings record (for the summary and each allocation's ``info``).
    """

    agents: dict[float, ExpertRoutingAgent]
    budgets: tuple[float, ...]
    budget_range: list[float] | None
    eval_fn: ArchLoss
    ref_macs: float
    train_seconds: float
    evaluations: int
    rows: tuple[dict[str, Any], ...]
    record: dict[str, Any]


def fit_agents(
    space: SearchSpace,
    task_loss_fn: TaskLoss,
    budgets: Sequence[float],
    settings: RouterSettings,
    *,
    batched_task_loss: BatchedTaskLoss | None = None,
    arch_loss_fn: ArchLoss | None = None,
    joint_parameters: Sequence[torch.nn.Parameter] = (),
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> FittedAgents:
    """The training half of :func:`train_router` (same arguments): train the agent(s), decode
    nothing. A caller that decodes on its own terms (e.g. :func:`router.joint.route_joint`)
    starts here.

    Raises:
        UserError: no budget, a budget outside (0, 1] or below the smallest arch, bad settings.
    """
    s = settings
    budgets = _check_budgets(budgets)
    device = torch.device(device)
    joint = list(joint_parameters)
    eval_fn = arch_loss_fn or _one_hot_loss(space, task_loss_fn, device)
    loss_scale = _loss_scale(space, eval_fn) if s.scale_resource_weight else 1.0
    ref_macs = float(space.macs(space.full()) if s.base_macs is None else s.base_macs)
    min_ratio = space.macs(space.smallest()) / ref_macs
    for b in budgets:
        if b < min_ratio - 1e-12:
            raise UserError(f"budget {b} is below the smallest arch's MACs ratio {min_ratio:.4f}")
    setup = _Setup(space, task_loss_fn, batched_task_loss, s, device, joint, loss_scale, ref_macs, progress)
    t0 = time.perf_counter()
    trained = _train_conditioned(setup, budgets, min_ratio) if s.budget_conditioned else _train_separate(setup, budgets)
    train_seconds = time.perf_counter() - t0
    record = s.record(loss_scale=loss_scale, joint=bool(joint))
    if trained.budget_range is not None:
        record["budget_range"] = trained.budget_range
    record["multipliers"] = {k: [[round(a, 6), b] for a, b in v] for k, v in trained.multipliers.items()}
    return FittedAgents(trained.agents, tuple(budgets), trained.budget_range, eval_fn, ref_macs, train_seconds,
                        trained.evaluations, tuple(trained.rows), record)


def _settings(settings: RouterSettings | None, overrides: Mapping[str, Any]) -> RouterSettings:
    """``settings`` (default ``RouterSettings()``) with the keyword overrides applied."""
    base = settings if settings is not None else RouterSettings()
    names = {f.name for f in dataclasses.fields(RouterSettings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"train_router() got an unexpected keyword argument {unknown[0]!r}")
    return dataclasses.replace(base, **overrides) if overrides else base


def _check_budgets(budgets: Sequence[float]) -> list[float]:
    out = [float(b) for b in budgets]
    if not out:
        raise UserError("train_router needs at least one budget")
    for b in out:
        if not 0 < b <= 1:
            raise UserError(f"budget ratios must be in (0, 1], got {b}")
    return out


def _one_hot_loss(space: SearchSpace, task_loss_fn: TaskLoss, device: torch.device) -> ArchLoss:
    """The task loss of a discrete arch: ``task_loss_fn`` on exact one-hots, without gradients."""
    def arch_loss(arch: Arch) -> float:
        with torch.no_grad():
            return float(task_loss_fn(one_hot_weights(space, arch, device)))

    return arch_loss


@dataclass(frozen=True)
class _Setup:
    """What every agent of one :func:`train_router` call is trained with."""

    space: SearchSpace
    task_loss_fn: TaskLoss
    batched_task_loss: BatchedTaskLoss | None
    settings: RouterSettings
    device: torch.device
    joint: list[torch.nn.Parameter]
    loss_scale: float
    ref_macs: float
    progress: bool
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        gen = torch.Generator(device=self.device).manual_seed(int(self.settings.seed))
        object.__setattr__(self, "generator", gen)

    def objective(self, lo: float, hi: float) -> RouterObjective:
        s = self.settings
        return RouterObjective(self.space, self.task_loss_fn, batched_task_loss=self.batched_task_loss,
                               mode=s.resource_mode, resource_weight=s.resource_weight * self.loss_scale,
                               base_macs=self.ref_macs, budget_range=(lo, hi), multiplier_init=self.loss_scale,
                               dual_lr=s.dual_lr)

    def agent(self, budget_conditioned: bool) -> ExpertRoutingAgent:
        s = self.settings
        return ExpertRoutingAgent(self.space, budget_conditioned=budget_conditioned, hidden_size=s.hidden_size,
                                  embed_size=s.embed_size, seed=int(s.seed)).to(self.device)

    def train(self, agent: ExpertRoutingAgent, objective: RouterObjective, sampler: BudgetSampler, tag: str,
              rows: list[dict[str, Any]]) -> int:
        """Train ``agent``, then fit its learned values per (dimension, choice) on its samples."""
        recorder = ValueRecorder()
        n = train_agent(agent, objective, sampler, self.settings, generator=self.generator, tag=tag, rows=rows,
                        progress=self.progress, joint=self.joint, recorder=recorder)
        if len(recorder):
            agent.values = fit_values(recorder, agent.num_choices)
        return n


@dataclass
class _Trained:
    """The trained agent of each budget (one shared agent when budget-conditioned) and the log."""

    agents: dict[float, ExpertRoutingAgent]
    multipliers: dict[str, list[tuple[float, float]]]
    budget_range: list[float] | None
    evaluations: int
    rows: list[dict[str, Any]]


def _train_conditioned(setup: _Setup, budgets: list[float], min_ratio: float) -> _Trained:
    """One agent over a log-uniform range of budgets, ``budgets_per_step`` of them per step."""
    s = setup.settings
    default = (min(budgets) / 1.1, min(1.0, max(budgets) * 1.1))
    lo, hi = s.budget_range if s.budget_range is not None else default
    lo = max(lo, min_ratio)
    if not 0 < lo <= hi <= 1:
        raise UserError(f"budget_range must satisfy 0 < low <= high <= 1, got ({lo}, {hi})")
    llo, lhi = math.log(lo), math.log(hi)

    def sampler(g: torch.Generator) -> list[float]:
        u = torch.rand(s.budgets_per_step, generator=g, device=setup.device).tolist()
        return [math.exp(llo + x * (lhi - llo)) for x in u]

    agent = setup.agent(budget_conditioned=True)
    objective = setup.objective(lo, hi)
    rows: list[dict[str, Any]] = []
    evaluations = setup.train(agent, objective, sampler, "conditioned", rows)
    return _Trained({b: agent for b in budgets}, {"conditioned": objective.multipliers()}, [lo, hi],
                    evaluations, rows)


def _train_separate(setup: _Setup, budgets: list[float]) -> _Trained:
    """One agent per budget, each drawing ``budgets_per_step`` Gumbel samples of its budget per step."""
    n = setup.settings.budgets_per_step
    trained = _Trained({}, {}, None, 0, [])
    for b in budgets:
        agent = setup.agent(budget_conditioned=False)
        objective = setup.objective(b, b)
        trained.evaluations += setup.train(agent, objective, lambda g, b=b: [b] * n, f"budget={b:g}", trained.rows)
        trained.agents[b] = agent
        trained.multipliers[f"budget={b:g}"] = objective.multipliers()
    return trained


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
    settings: RouterSettings,
    budget_range: Sequence[float] | None,
    eval_fn: ArchLoss,
) -> BudgetOutcome:
    """Decode one budget ``b`` after training: the knapsack decode on the agent's learned values
    and the bounded repair, or (``decode="argmax"``) (calibrate,) repair, fill, exchange; timed and logged."""
    t_decode = time.perf_counter()
    agent.eval()
    agent_input = b
    if settings.decode == "knapsack" and getattr(agent, "values", None) is not None:
        decoded = knapsack_decode(space, agent.values, b * ref_macs)
        budget_evals = settings.max_repair_evaluations if settings.repair_score == "loss" else 0
        arch, rec = bounded_repair(space, decoded, b * ref_macs, eval_fn, agent.values, budget_evals)
        n_rep, n_fill, n_exch, n_eval = 0, rec.moves, 0, rec.evaluations
    else:
        decoded = agent.decode(b)
        if settings.budget_conditioned and settings.calibrate:
            agent_input, decoded = calibrate_budget(space, agent, b, b * ref_macs, budget_range)
        scorer = logit_scorer(space, agent, b) if settings.repair_score == "logits" else eval_fn
        arch, n_rep, n_fill, n_exch, n_eval = make_feasible(space, decoded, b * ref_macs, scorer, fill=settings.fill,
                                                            exchange=settings.exchange)
        if settings.repair_score != "loss":
            n_eval = 0  # the repair scored archs by the agent's log-probabilities only
    m = space.macs(arch)
    task = float(eval_fn(arch))
    dec_task = float(eval_fn(decoded))
    outcome = BudgetOutcome(
        budget_ratio=b, arch=arch, decoded_arch=decoded, macs=m, achieved_ratio=m / ref_macs,
        decoded_ratio=space.macs(decoded) / ref_macs, agent_budget_ratio=agent_input, task_loss=task,
        decoded_task_loss=dec_task, repair_steps=n_rep, fill_steps=n_fill, exchange_steps=n_exch,
        evaluations=n_eval, decode_seconds=time.perf_counter() - t_decode,
    )
    log.info("router budget %.3f: decoded ratio %.4f -> %.4f after %d repair / %d fill / %d exchange steps",
             b, outcome.decoded_ratio, outcome.achieved_ratio, n_rep, n_fill, n_exch)
    return outcome
