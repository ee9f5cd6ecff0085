"""How the Expert Routing Agent is trained and decoded: :class:`RouterSettings`.

Example:
    >>> s = RouterSettings(steps=50, budget_conditioned=True)
    >>> s.lr, s.resource_mode
    (0.1, 'lagrangian')
    >>> RouterSettings(repair_score="random")
    Traceback (most recent call last):
    ...
    search_spaces.errors.UserError: repair_score must be 'loss' or 'logits', got 'random'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.objective import RESOURCE_MODES
from search_spaces.errors import UserError

__all__ = ["DECODES", "REPAIR_SCORES", "RouterSettings"]

REPAIR_SCORES = ("loss", "logits")
DECODES = ("knapsack", "argmax")


@dataclass(frozen=True)
class RouterSettings:
    """Settings of :func:`router.train.train_router` (values are kept as given, for the record).

    Attributes:
        steps: optimiser steps (per agent when not budget-conditioned).
        lr: Adam learning rate of the agent's per-token logit table and price (cosine-annealed).
        net_lr_scale: the GRU/embedding/head parameters use ``lr * net_lr_scale``.
        seed: seeds the agent's initialisation and the Gumbel noise.
        budget_conditioned: train one agent over a range of budgets instead of one per budget.
        budget_range: ``(low, high)`` range sampled log-uniformly by the conditioned agent
            (default: the budgets' range widened by 10%, clipped to (0, 1]).
        budgets_per_step: budgets sampled per step by the conditioned agent (a fixed-budget
            agent draws this many Gumbel samples of its one budget instead).
        resource_mode: ``"lagrangian"`` (multiplier by dual ascent plus a quadratic term on
            ``log r - log p``) or ``"log_ratio"`` (fixed penalty
            ``resource_weight * log(max(r,p)/min(r,p))``); see
            :class:`router.objective.RouterObjective`.
        resource_weight: weight of the resource term; in ``log_ratio`` mode it must exceed the
            task loss's marginal value of compute (d loss / d log MACs) for the optimum to
            sit on the budget.
        scale_resource_weight: multiply ``resource_weight`` by the task loss's mean slope
            ``(loss(smallest) - loss(full)) / log(macs(full) / macs(smallest))`` (two loss
            evaluations before training), so the default works whatever the loss's units.
        dual_lr: dual ascent step of the lagrangian multiplier (fraction of resource_weight).
        dual_on_decode: the dual ascent follows the MACs ratio of the agent's deterministic
            decode (argmax) rather than of the random samples, so the budget is met by what is
            exported (MACs only, no task-loss evaluations).
        tau_start, tau_end: Gumbel-softmax temperature, annealed geometrically (with a hard
            straight-through sample it shapes the gradient only).
        hidden_size: the agent's GRU width.
        embed_size: the agent's token embedding width.
        decode: ``"knapsack"`` (default): the agent's learned value of each (dimension,
            choice), fitted on the task losses of its training samples, decoded by an exact
            multiple-choice knapsack under the budget (:func:`router.knapsack.knapsack_decode`;
            no loss evaluation), then :func:`router.knapsack.bounded_repair` with at most
            ``max_repair_evaluations`` exact evaluations; ``"argmax"``: the agent's argmax
            decode (calibrated), then the unbounded repair/fill/exchange of
            :func:`router.feasibility.make_feasible` (``fill``, ``exchange``).
        max_repair_evaluations: the knapsack decode's repair budget of exact evaluations (the
            decode's own evaluation included; 0: none).
        repair_score: ``"loss"`` (score archs with the arch loss) or ``"logits"`` (minus the
            agent's log-probability of the arch: no model evaluations, for expensive losses).
        calibrate: budget-conditioned agent only: before repair, bisect the budget given to the
            agent (within its training range, MACs only, no loss evaluations) for the largest
            decode that fits the target.
        fill: spend leftover budget greedily after decoding.
        exchange: after filling, try one-down-one-up exchanges (see
            :func:`router.feasibility.make_feasible`).
        base_macs: MACs meaning ratio 1 (default: the full arch's).
        log_every: training-log row every this many steps.
        joint_lr: Adam rate of the parameters trained jointly with the agent.

    Raises:
        UserError: a count out of range or an unknown mode.
    """

    steps: int = 400
    lr: float = 0.1
    net_lr_scale: float = 0.01
    seed: int = 0
    budget_conditioned: bool = False
    budget_range: tuple[float, float] | None = None
    budgets_per_step: int = 8
    resource_mode: str = "lagrangian"
    resource_weight: float = 10.0
    scale_resource_weight: bool = True
    dual_lr: float = 0.05
    dual_on_decode: bool = False
    tau_start: float = 5.0
    tau_end: float = 1.0
    hidden_size: int = 64
    embed_size: int = 32
    decode: str = "knapsack"
    max_repair_evaluations: int = 32
    repair_score: str = "loss"
    calibrate: bool = True
    fill: bool = True
    exchange: bool = True
    base_macs: float | None = None
    log_every: int = 10
    joint_lr: float = 1e-5

    def __post_init__(self) -> None:
        if self.steps < 0 or self.budgets_per_step < 1 or self.log_every < 1:
            raise UserError("steps must be >= 0, budgets_per_step >= 1 and log_every >= 1")
        if self.repair_score not in REPAIR_SCORES:
            raise UserError(f"repair_score must be 'loss' or 'logits', got {self.repair_score!r}")
        if self.decode not in DECODES:
            raise UserError(f"decode must be 'knapsack' or 'argmax', got {self.decode!r}")
        if self.max_repair_evaluations < 0:
            raise UserError(f"max_repair_evaluations must be >= 0, got {self.max_repair_evaluations}")
        if self.resource_mode not in RESOURCE_MODES:
            raise UserError(f"resource_mode must be one of {RESOURCE_MODES}, got {self.resource_mode!r}")

    def record(self, *, loss_scale: float, joint: bool) -> dict[str, Any]:
        """The settings written to the summary and each allocation's ``info``."""
        return {
            "steps": self.steps, "lr": self.lr, "seed": self.seed, "budgets_per_step": self.budgets_per_step,
            "resource_mode": self.resource_mode, "resource_weight": self.resource_weight, "loss_scale": loss_scale,
            "effective_resource_weight": self.resource_weight * loss_scale, "dual_lr": self.dual_lr,
            "dual_on_decode": self.dual_on_decode, "net_lr_scale": self.net_lr_scale, "tau_start": self.tau_start,
            "tau_end": self.tau_end, "hidden_size": self.hidden_size, "repair_score": self.repair_score,
            "fill": self.fill, "exchange": self.exchange, "joint": joint, "decode": self.decode,
            "max_repair_evaluations": self.max_repair_evaluations,
        }
