"""Making a decoded arch fit a MACs budget: greedy bounded repair, fill and exchange
(:func:`make_feasible`), and the bisection of a budget-conditioned agent's input budget
(:func:`calibrate_budget`). Every loop is bounded by the number of choice steps in the space.

Example:
    >>> from router.synthetic import SyntheticMixture
    >>> bench = SyntheticMixture.default(seed=0, num_experts=2, num_blocks=3, num_skips=1)
    >>> full = bench.space.full()
    >>> budget_macs = 0.5 * bench.space.macs(full)
    >>> arch, repair_steps, fill_steps, exchange_steps, evaluations = make_feasible(
    ...     bench.space, full, budget_macs, bench.loss)
    >>> bench.space.macs(arch) <= budget_macs, repair_steps > 0
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from router.agent import ExpertRoutingAgent
from search_spaces import Arch, SearchSpace
from search_spaces.errors import UserError

__all__ = ["ArchLoss", "calibrate_budget", "logit_scorer", "make_feasible"]

ArchLoss = Callable[[Arch], float]


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
    cur, m, repair_steps = _repair(space, space.repair(arch), budget_macs, score, max_steps, smallest)
    fill_steps = exchange_steps = 0
    if not fill:
        return cur, repair_steps, fill_steps, exchange_steps, len(cache)
    cur, fill_steps, exchange_steps = _fill(space, cur, m, budget_macs, score, max_steps, exchange=exchange,
                                            exchange_candidates=exchange_candidates)
    return cur, repair_steps, fill_steps, exchange_steps, len(cache)


def _repair(space: SearchSpace, cur: Arch, budget_macs: float, score: ArchLoss, max_steps: int,
            smallest: Arch) -> tuple[Arch, float, int]:
    """Repair step of :func:`make_feasible`: moves down until ``macs <= budget_macs``.

    Returns ``(arch, its MACs, repair_steps)``; ``score`` is the cached arch loss.
    """
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
    return cur, m, repair_steps


def _fill(space: SearchSpace, cur: Arch, m: float, budget_macs: float, score: ArchLoss, max_steps: int, *,
          exchange: bool, exchange_candidates: int) -> tuple[Arch, int, int]:
    """Fill and exchange steps of :func:`make_feasible` on a feasible ``cur`` of ``m`` MACs.

    Returns ``(arch, fill_steps, exchange_steps)``; ``score`` is the cached arch loss.
    """
    fill_steps = exchange_steps = 0
    free_names = space.free_names()
    for _ in range(2 * max_steps):
        base = score(cur)
        # every single-dimension move with its MACs change; the loss is scored only where it can
        # matter (scoring is the expensive part: one held-out pass per new expert arch)
        moves = [(name, cand, space.macs(cand) - m) for name in free_names for direction in (-1, +1)
                 for cand in _moves(space, cur, name, direction)]
        ups = [(-dl / max(dm, 1e-12), c, m + dm) for _, c, dm in moves
               if m + dm <= budget_macs + 1e-9 and (dl := score(c) - base) < 0]
        if ups:  # fill: the largest loss decrease per MAC spent that still fits
            _, cur, m = max(ups, key=lambda x: x[0])
            fill_steps += 1
            continue
        if not exchange or len(moves) < 2:
            break
        # a move that does not fit even beside the largest saving is in no fitting pair: not scored
        min_dm = min(dm for _, _, dm in moves)
        singles = [(name, c, score(c) - base, dm) for name, c, dm in moves
                   if dm + min_dm <= budget_macs - m + 1e-9]
        if len(singles) < 2:
            break
        found = _best_exchange(space, cur, m, budget_macs, score, base, singles, free_names, exchange_candidates)
        if found is None:
            break
        cur, m = found
        exchange_steps += 1
    return cur, fill_steps, exchange_steps


def _best_exchange(space: SearchSpace, cur: Arch, m: float, budget_macs: float, score: ArchLoss, base: float,
                   singles: list[tuple[str, Arch, float, int]], free_names: Sequence[str],
                   exchange_candidates: int) -> tuple[Arch, int] | None:
    """Exchange step of :func:`make_feasible`: the best fitting one-down-one-up pair, or None.

    ``singles`` are the single moves from ``cur`` as ``(name, arch, loss change, MACs change)``.
    """
    # exchange: one dimension down, another up; rank pairs by the sum of their single
    # effects (exact when the loss is additive), verify the best few exactly
    names_arr = np.array([x[0] for x in singles])
    dl = np.array([x[2] for x in singles])  # (M,)
    dm = np.array([x[3] for x in singles], dtype=np.float64)  # (M,)
    est = dl[:, None] + dl[None, :]  # (M, M)
    ok = ((dm[:, None] + dm[None, :]) <= budget_macs - m + 1e-9) & (names_arr[:, None] < names_arr[None, :])
    ok &= est < 0
    if not ok.any():
        return None
    order = np.argsort(np.where(ok, est, np.inf), axis=None, kind="stable")[: int(min(exchange_candidates, ok.sum()))]
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
    return found


def calibrate_budget(space: SearchSpace, agent: ExpertRoutingAgent, budget_ratio: float, budget_macs: float,
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


def logit_scorer(space: SearchSpace, agent: ExpertRoutingAgent, budget_ratio: float) -> ArchLoss:
    """Minus the agent's log-probability of an arch at ``budget_ratio``: a repair score that
    costs no model evaluation (one agent forward pass, when built)."""
    lp = agent.log_probs(budget_ratio)

    def scorer(a: Arch, lp: Mapping[str, list[float]] = lp) -> float:
        return -sum(lp[d.name][d.index(a[d.name])] for d in space.free_dimensions())

    return scorer
