"""The optimisation loop of the Expert Routing Agent (:func:`_train_one`): Adam on the agent's
logit table and network (optionally jointly with expert weights), straight-through Gumbel-softmax
samples at an annealed temperature (:func:`_tau`), dual ascent of the objective's multiplier,
one training-log row every ``log_every`` steps. Called by :func:`router.train.train_router`.

Example:
    >>> _tau(0, 5, 5.0, 1.0), _tau(4, 5, 5.0, 1.0)
    (5.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from router.agent import ExpertRoutingAgent, gumbel_softmax_st
from router.objective import RouterObjective


def _tau(step: int, steps: int, tau_start: float, tau_end: float) -> float:
    if steps <= 1:
        return tau_end
    return tau_start * (tau_end / tau_start) ** (step / (steps - 1))


def _train_one(
    agent: ExpertRoutingAgent,
    objective: RouterObjective,
    budget_sampler: Callable[[torch.Generator], list[float]],
    *,
    steps: int,
    lr: float,
    tau_start: float,
    tau_end: float,
    net_lr_scale: float,
    dual_on_decode: bool,
    generator: torch.Generator,
    log_every: int,
    tag: str,
    rows: list[dict[str, Any]],
    progress: bool = False,
    joint: Sequence[torch.nn.Parameter] = (),
    joint_lr: float = 0.0,
) -> int:
    """Adam on the agent for ``steps`` steps; appends log rows; returns task-loss evaluations."""
    table = [agent.token_bias, agent.price_bias, agent.price_slopes]
    table_ids = {id(q) for q in table}
    net = [q for q in agent.parameters() if id(q) not in table_ids]
    groups = [{"params": table, "lr": lr}, {"params": net, "lr": lr * net_lr_scale}]
    if joint:
        groups.append({"params": list(joint), "lr": joint_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(  # cosine decay to 5% of each group's rate
        opt, lambda i: 0.05 + 0.475 * (1.0 + math.cos(math.pi * min(i, steps) / max(steps, 1))))
    evaluations = 0
    from tqdm.auto import tqdm

    pbar = tqdm(total=steps, desc=f"router {tag}", disable=not progress, dynamic_ncols=True, leave=False)
    for step in range(steps):
        tau = _tau(step, steps, tau_start, tau_end)
        budgets = budget_sampler(generator)
        logits = agent(budgets)  # (B, T, C)
        w = gumbel_softmax_st(logits, tau, generator)  # (B, T, C)
        terms = objective.batch(w, budgets)  # each (B,)
        evaluations += len(budgets)
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
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"router loss became {float(loss.detach())} at step {step} ({tag})")
        pbar.update(1)
        if step % log_every == 0 or step == steps - 1:
            pbar.set_postfix(loss=f"{float(loss.detach()):.4g}", ratio=f"{float(np.mean(ratios)):.3f}")
            rows.append({
                "run": tag, "step": step, "tau": tau, "lr": sched.get_last_lr()[0],
                "loss": float(loss.detach()), "task_loss": float(np.mean(tasks)),
                "resource_loss": float(np.mean(ress)), "ratio": float(np.mean(ratios)),
                "budget_ratio": float(np.mean(budgets)),
                "abs_ratio_error": float(np.mean(np.abs(np.asarray(ratios) - np.asarray(budgets)))),
                "multiplier": objective.multiplier(float(np.mean(budgets))),
            })
    pbar.close()
    return evaluations
