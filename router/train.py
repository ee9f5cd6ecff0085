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
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experts.allocation import Allocation
from experts.intervals import Intervals
from router.agent import ExpertRoutingAgent, gumbel_softmax_st, one_hot_weights
from router.objective import RESOURCE_MODES, BatchedTaskLoss, RouterObjective, TaskLoss
from search_spaces import Arch, ProductSpace, SearchSpace
from search_spaces.errors import UserError

__all__ = ["BudgetOutcome", "RouterResult", "make_feasible", "train_router"]

log = logging.getLogger(__name__)

ArchLoss = Callable[[Arch], float]


@dataclass(frozen=True)
class BudgetOutcome:
    """What the router exports for one target budget.

    Attributes:
        budget_ratio: the target (fraction of the full arch's MACs).
        arch: the feasible arch (after repair and fill).
        decoded_arch: the agent's deterministic decode before repair/fill.
        macs / achieved_ratio: cost of ``arch``.
        decoded_ratio: cost ratio of ``decoded_arch``.
        task_loss: loss of ``arch`` by the evaluator.
        decoded_task_loss: loss of ``decoded_arch`` by the evaluator.
        agent_budget_ratio: the budget given to the agent for the decode (differs from
            ``budget_ratio`` after calibration of a budget-conditioned agent).
        repair_steps / fill_steps / exchange_steps: steps taken by each loop.
        evaluations: task-loss evaluations spent by repair/fill/exchange (cache hits excluded;
            0 when they scored archs by the agent's log-probabilities).
        decode_seconds: wall time of this budget's decode, calibration, repair, fill and
            exchange (training time is :attr:`RouterResult.train_seconds`, shared by budgets).
    """

    budget_ratio: float
    arch: Arch
    decoded_arch: Arch
    macs: int
    achieved_ratio: float
    decoded_ratio: float
    task_loss: float
    decoded_task_loss: float
    agent_budget_ratio: float
    repair_steps: int
    fill_steps: int
    exchange_steps: int
    evaluations: int
    decode_seconds: float = 0.0


@dataclass(frozen=True)
class RouterResult:
    """Outcome of :func:`train_router`: one :class:`BudgetOutcome` per budget plus the log."""

    outcomes: tuple[BudgetOutcome, ...]
    log: tuple[dict[str, Any], ...]
    agents: tuple[ExpertRoutingAgent, ...] = field(repr=False)
    budget_conditioned: bool
    train_seconds: float
    train_evaluations: int
    base_macs: float
    settings: dict[str, Any] = field(default_factory=dict)

    def outcome(self, budget_ratio: float) -> BudgetOutcome:
        """The outcome for ``budget_ratio`` (ValueError if it was not among the budgets)."""
        for o in self.outcomes:
            if math.isclose(o.budget_ratio, budget_ratio, rel_tol=1e-9, abs_tol=1e-12):
                return o
        raise ValueError(f"no outcome for budget {budget_ratio}; budgets are {[o.budget_ratio for o in self.outcomes]}")

    def allocation(self, space: ProductSpace, intervals: Intervals, budget_ratio: float) -> Allocation:
        """The :class:`Allocation` record of one budget (parts of ``space`` = experts, in order)."""
        if not isinstance(space, ProductSpace):
            raise UserError("an allocation needs a ProductSpace with one part per interval expert")
        if len(space.parts) != intervals.num_intervals:
            raise UserError(f"space has {len(space.parts)} experts but intervals has {intervals.num_intervals}")
        o = self.outcome(budget_ratio)
        per = space.split(o.arch)
        parts = list(space.parts)
        steps = [space.weights[p] for p in parts]
        if any(abs(s - round(s)) > 1e-9 for s in steps):
            raise UserError(f"ProductSpace weights must be whole step counts for an Allocation, got {steps}")
        info = {
            "budget_conditioned": self.budget_conditioned,
            "train_seconds": self.train_seconds,
            "train_evaluations": self.train_evaluations,
            "repair_steps": o.repair_steps,
            "fill_steps": o.fill_steps,
            "exchange_steps": o.exchange_steps,
            "repair_evaluations": o.evaluations,
            "decode_seconds": o.decode_seconds,
            # what this budget's allocation cost end to end: the (shared) training run plus its
            # own decode/repair; what diffnas bench reports as routing cost
            "cost": {"wall_s": self.train_seconds + o.decode_seconds,
                     "evaluations": self.train_evaluations + o.evaluations},
            "decoded_ratio": o.decoded_ratio,
            "agent_budget_ratio": o.agent_budget_ratio,
            "decoded_arch": o.decoded_arch.to_dict(),
            "task_loss": o.task_loss,
            "decoded_task_loss": o.decoded_task_loss,
            **{k: v for k, v in self.settings.items() if isinstance(v, (int, float, str, bool, list))},
        }
        return Allocation(
            method="router",
            budget_ratio=float(budget_ratio),
            intervals=intervals,
            archs=tuple(per[p] for p in parts),
            macs_per_expert=tuple(space.parts[p].macs(per[p]) for p in parts),
            steps_per_expert=tuple(int(round(s)) for s in steps),
            base_trajectory_macs=int(round(self.base_macs)),
            info=info,
        )

    def write_log(self, path: str | Path) -> None:
        """Training log as JSON lines (one object per logged step)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w") as f:
            for row in self.log:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        tmp.replace(path)

    def summary(self) -> list[dict[str, Any]]:
        """Plain per-budget rows (JSON-ready)."""
        rows = []
        for o in self.outcomes:
            d = asdict(o)
            d["arch"] = o.arch.to_dict()
            d["decoded_arch"] = o.decoded_arch.to_dict()
            rows.append(d)
        return rows


# --------------------------------------------------------------------------- feasibility
def _free_indices(space: SearchSpace, arch: Arch) -> dict[str, int]:
    return {d.name: d.index(arch[d.name]) for d in space.free_dimensions()}


def _moves(space: SearchSpace, arch: Arch, name: str, direction: int) -> list[Arch]:
    """Archs with dimension ``name`` moved to each lower (``-1``) or higher (``+1``) choice."""
    d = space.dimension(name)
    i = d.index(arch[name])
    targets = range(i - 1, -1, -1) if direction < 0 else range(i + 1, len(d.choices))
    free = {n: arch[n] for n in space.free_names()}
    out = []
    for j in targets:
        new = space.repair(space.complete({**free, name: d.choices[j]}))
        if new != arch:
            out.append(new)
    return out


def make_feasible(
    space: SearchSpace,
    arch: Arch,
    budget_macs: float,
    arch_loss: ArchLoss,
    *,
    fill: bool = True,
    exchange: bool = True,
    exchange_candidates: int = 8,
) -> tuple[Arch, int, int, int, int]:
    """Greedy bounded repair (down until ``macs <= budget_macs``) then optional fill (up).

    Each step moves one free dimension to any smaller (repair) or larger (fill) choice.

    After the repair, while ``fill`` is on: take the single move up with the largest loss
    decrease per MAC that fits (fill); when none fits and ``exchange`` is on, try pairs of
    moves (one dimension down, another up) that fit and lower the loss, ranked by the sum of
    their single effects, verifying the best ``exchange_candidates`` exactly (exchange).
    ``arch_loss(arch)`` scores an arch (lower is better); calls are cached per arch.
    Returns ``(arch, repair_steps, fill_steps, exchange_steps, evaluations)``.

    Raises:
        UserError: if even the smallest arch exceeds the budget.
    """
    smallest = space.smallest()
    if space.macs(smallest) > budget_macs + 1e-9:
        raise UserError(
            f"budget of {budget_macs:.4g} MACs is below the smallest arch's {space.macs(smallest):.4g} MACs"
        )
    cache: dict[Arch, float] = {}

    def score(a: Arch) -> float:
        if a not in cache:
            cache[a] = float(arch_loss(a))
        return cache[a]

    max_steps = sum(len(d.choices) - 1 for d in space.free_dimensions()) + 1
    cur = space.repair(arch)
    m = space.macs(cur)
    repair_steps = 0
    for _ in range(max_steps):
        if m <= budget_macs + 1e-9:
            break
        base = score(cur)
        best: tuple[float, Arch, int] | None = None
        feasible_now: list[tuple[Arch, int]] = []
        for cand in (c for name in space.free_names() for c in _moves(space, cur, name, -1)):
            cm = space.macs(cand)
            saved = m - cm
            if saved <= 0:
                continue
            if cm <= budget_macs + 1e-9:
                feasible_now.append((cand, cm))
            rate = (score(cand) - base) / saved
            if best is None or rate < best[0]:
                best = (rate, cand, cm)
        if best is not None:
            # a move that fits the budget at once: take the one that costs the least loss
            fits = [(score(c) - base, c, cm) for c, cm in feasible_now]
            if fits:
                best = min(fits, key=lambda x: x[0])
        if best is None:  # nothing reduces MACs any more: fall back to the smallest arch
            cur, m = smallest, space.macs(smallest)
            repair_steps += 1
            break
        cur, m = best[1], best[2]
        repair_steps += 1
    if m > budget_macs + 1e-9:  # pragma: no cover - bounded loop exhausted
        cur, m = smallest, space.macs(smallest)
    fill_steps = exchange_steps = 0
    if not fill:
        return cur, repair_steps, fill_steps, exchange_steps, len(cache)
    free_names = space.free_names()
    for _ in range(2 * max_steps):
        base = score(cur)
        # every single-dimension move, with its exact loss and MACs change
        singles: list[tuple[str, Arch, float, int]] = []
        for name in free_names:
            for direction in (-1, +1):
                for cand in _moves(space, cur, name, direction):
                    singles.append((name, cand, score(cand) - base, space.macs(cand) - m))
        ups = [(-dl / max(dm, 1e-12), c, m + dm) for _, c, dl, dm in singles
               if dl < 0 and m + dm <= budget_macs + 1e-9]
        if ups:  # fill: the largest loss decrease per MAC spent that still fits
            _, cur, m = max(ups, key=lambda x: x[0])
            fill_steps += 1
            continue
        if not exchange or len(singles) < 2:
            break
        # exchange: one dimension down, another up; rank pairs by the sum of their single
        # effects (exact when the loss is additive), verify the best few exactly
        names_arr = np.array([x[0] for x in singles])
        dl = np.array([x[2] for x in singles])  # (M,)
        dm = np.array([x[3] for x in singles], dtype=np.float64)  # (M,)
        est = dl[:, None] + dl[None, :]  # (M, M)
        ok = ((dm[:, None] + dm[None, :]) <= budget_macs - m + 1e-9) & (names_arr[:, None] < names_arr[None, :])
        ok &= est < 0
        if not ok.any():
            break
        order = np.argsort(np.where(ok, est, np.inf), axis=None)[: int(min(exchange_candidates, ok.sum()))]
        found = None
        for flat in order:
            i, j = np.unravel_index(int(flat), est.shape)
            vals = {n: cur[n] for n in free_names}
            vals[singles[i][0]] = singles[i][1][singles[i][0]]
            vals[singles[j][0]] = singles[j][1][singles[j][0]]
            cand = space.repair(space.complete(vals))
            cm = space.macs(cand)
            if cm <= budget_macs + 1e-9 and score(cand) < base - 1e-12:
                if found is None or score(cand) < score(found[0]):
                    found = (cand, cm)
        if found is None:
            break
        cur, m = found
        exchange_steps += 1
    return cur, repair_steps, fill_steps, exchange_steps, len(cache)


def _calibrate(space: SearchSpace, agent: ExpertRoutingAgent, budget_ratio: float, budget_macs: float,
               budget_range: Sequence[float] | None, iterations: int = 24) -> tuple[float, Arch]:
    """Bisect the agent's input budget (log scale) for the largest decode within ``budget_macs``.

    Returns ``(input budget, decoded arch)``; falls back to the plain decode when no input in
    the range decodes within the budget (the repair then takes over).
    """
    lo, hi = budget_range if budget_range is not None else (budget_ratio, budget_ratio)
    lo, hi = min(lo, budget_ratio), max(hi, budget_ratio)
    plain = agent.decode(budget_ratio)
    best: tuple[float, float, Arch] | None = None  # (macs, input, arch)

    def consider(x: float) -> float:
        nonlocal best
        arch = agent.decode(x)
        m = float(space.macs(arch))
        if m <= budget_macs + 1e-9 and (best is None or m > best[0]):
            best = (m, x, arch)
        return m

    if consider(budget_ratio) > budget_macs + 1e-9:
        a, b = math.log(lo), math.log(budget_ratio)  # over budget: search lower inputs
    else:
        a, b = math.log(budget_ratio), math.log(hi)  # fits: search higher inputs
    for _ in range(iterations):
        mid = 0.5 * (a + b)
        if consider(math.exp(mid)) <= budget_macs + 1e-9:
            a = mid
        else:
            b = mid
    if best is None:
        return budget_ratio, plain
    return best[1], best[2]


# --------------------------------------------------------------------------- training
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
    loss_scale = 1.0
    if scale_resource_weight:
        full, small = space.full(), space.smallest()
        log_span = math.log(space.macs(full) / max(space.macs(small), 1e-12))
        loss_scale = (eval_fn(small) - eval_fn(full)) / max(log_span, 1e-12)
        if not loss_scale > 0:  # the loss does not grow when shrinking: keep units as given
            loss_scale = 1.0
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
        t_decode = time.perf_counter()
        agent = agents[b]
        agent.eval()
        decoded = agent.decode(b)
        agent_input = b
        if budget_conditioned and calibrate:
            agent_input, decoded = _calibrate(space, agent, b, b * ref_macs, settings_range)
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
        outcomes.append(BudgetOutcome(
            budget_ratio=b, arch=arch, decoded_arch=decoded, macs=m, achieved_ratio=m / ref_macs,
            decoded_ratio=space.macs(decoded) / ref_macs, agent_budget_ratio=agent_input, task_loss=task, decoded_task_loss=dec_task,
            repair_steps=n_rep, fill_steps=n_fill, exchange_steps=n_exch, evaluations=n_eval,
            decode_seconds=time.perf_counter() - t_decode,
        ))
        log.info("router budget %.3f: decoded ratio %.4f -> %.4f after %d repair / %d fill / %d exchange steps",
                 b, outcomes[-1].decoded_ratio, outcomes[-1].achieved_ratio, n_rep, n_fill, n_exch)
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
