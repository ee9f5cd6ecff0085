"""The optimisation loop of the Expert Routing Agent (:func:`train_agent`): Adam on the agent's
logit table and network (optionally jointly with expert weights), straight-through Gumbel-softmax
samples at an annealed temperature (:func:`temperature`), dual ascent of the objective's
multiplier, one training-log row every ``log_every`` steps. Called by
:func:`router.train.train_router`.

Example:
    >>> temperature(0, 5, 5.0, 1.0), temperature(4, 5, 5.0, 1.0)
    (5.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from router.agent import ExpertRoutingAgent, gumbel_softmax_st
from router.knapsack import ValueRecorder
from router.objective import RouterObjective
from router.settings import RouterSettings

__all__ = ["BudgetSampler", "temperature", "train_agent"]

BudgetSampler = Callable[[torch.Generator], list[float]]


def temperature(step: int, steps: int, tau_start: float, tau_end: float) -> float:
    """Gumbel-softmax temperature at ``step`` of ``steps``: geometric from ``tau_start`` to ``tau_end``."""
    if steps <= 1:
        return tau_end
    return tau_start * (tau_end / tau_start) ** (step / (steps - 1))


def train_agent(
    agent: ExpertRoutingAgent,
    objective: RouterObjective,
    budget_sampler: BudgetSampler,
    settings: RouterSettings,
    *,
    generator: torch.Generator,
    tag: str,
    rows: list[dict[str, Any]],
    progress: bool = False,
    joint: Sequence[torch.nn.Parameter] = (),
    recorder: ValueRecorder | None = None,
) -> int:
    """Adam on the agent for ``settings.steps`` steps; appends log rows to ``rows`` (``run`` =
    ``tag``); returns the task-loss evaluations spent. ``recorder`` keeps every hard sample and
    its task loss (for the agent's learned values, :func:`router.knapsack.fit_values`)."""
    from tqdm.auto import tqdm

    steps = settings.steps
    opt, sched = _optimizer(agent, settings, joint)
    evaluations = 0
    pbar = tqdm(total=steps, desc=f"router {tag}", disable=not progress, dynamic_ncols=True, leave=False)
    for step in range(steps):
        tau = temperature(step, steps, settings.tau_start, settings.tau_end)
        budgets = budget_sampler(generator)
        rec = _step(agent, objective, budgets, tau, generator, opt, sched, settings.dual_on_decode, recorder)
        evaluations += len(budgets)
        if not math.isfinite(rec.loss):
            raise FloatingPointError(f"router loss became {rec.loss} at step {step} ({tag})")
        pbar.update(1)
        if step % settings.log_every == 0 or step == steps - 1:
            pbar.set_postfix(loss=f"{rec.loss:.4g}", ratio=f"{float(np.mean(rec.ratios)):.3f}")
            rows.append(_log_row(tag, step, tau, sched.get_last_lr()[0], rec, budgets, objective))
    pbar.close()
    return evaluations


def _optimizer(agent: ExpertRoutingAgent, settings: RouterSettings, joint: Sequence[torch.nn.Parameter],
               ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam with three rates (logit table and price; network; joint parameters), cosine-decayed."""
    table = [agent.token_bias, agent.price_bias, agent.price_slopes]
    table_ids = {id(q) for q in table}
    net = [q for q in agent.parameters() if id(q) not in table_ids]
    groups = [{"params": table, "lr": settings.lr}, {"params": net, "lr": settings.lr * settings.net_lr_scale}]
    if joint:
        groups.append({"params": list(joint), "lr": settings.joint_lr})
    opt = torch.optim.Adam(groups)
    steps = settings.steps
    sched = torch.optim.lr_scheduler.LambdaLR(  # cosine decay to 5% of each group's rate
        opt, lambda i: 0.05 + 0.475 * (1.0 + math.cos(math.pi * min(i, steps) / max(steps, 1))))
    return opt, sched


@dataclass(frozen=True)
class _StepRecord:
    """What one step logs: the mean loss and the per-sample terms."""

    loss: float
    tasks: np.ndarray
    resources: np.ndarray
    ratios: np.ndarray


def _step(agent: ExpertRoutingAgent, objective: RouterObjective, budgets: list[float], tau: float,
          generator: torch.Generator, opt: torch.optim.Optimizer, sched: Any, dual_on_decode: bool,
          recorder: ValueRecorder | None = None) -> _StepRecord:
    """One Gumbel sample per budget, one Adam step on the mean objective, one dual ascent step."""
    logits = agent(budgets)  # (B, T, C)
    w = gumbel_softmax_st(logits, tau, generator)  # (B, T, C)
    terms = objective.batch(w, budgets)  # each (B,)
    if recorder is not None:  # hard one-hots: the task loss of each sampled discrete arch
        recorder.add(w, terms.task)
    loss = terms.loss.mean()
    tasks = terms.task.detach().cpu().numpy()
    ress = terms.resource.detach().cpu().numpy()
    ratios = terms.ratio.detach().cpu().numpy()
    gaps = terms.gap.detach().cpu().tolist()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    if dual_on_decode:  # the constraint that matters is the deterministic decode's
        with torch.no_grad():
            hard = torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)  # (B, T, C)
            r_dec = objective.batch_ratio(hard).cpu().tolist()  # (B,)
        gaps = [math.log(max(r, 1e-12) / p) for r, p in zip(r_dec, budgets)]
    objective.update_dual(budgets, gaps)
    return _StepRecord(float(loss.detach()), tasks, ress, ratios)


def _log_row(tag: str, step: int, tau: float, lr: float, rec: _StepRecord, budgets: list[float],
             objective: RouterObjective) -> dict[str, Any]:
    return {
        "run": tag, "step": step, "tau": tau, "lr": lr,
        "loss": rec.loss, "task_loss": float(np.mean(rec.tasks)),
        "resource_loss": float(np.mean(rec.resources)), "ratio": float(np.mean(rec.ratios)),
        "budget_ratio": float(np.mean(budgets)),
        "abs_ratio_error": float(np.mean(np.abs(np.asarray(rec.ratios) - np.asarray(budgets)))),
        "multiplier": objective.multiplier(float(np.mean(budgets))),
    }
