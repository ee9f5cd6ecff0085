"""The agent's learned values per (dimension, choice) and the exact knapsack decode on them.

During training every step samples hard one-hot archs and evaluates their task loss (the
relaxed evaluations training pays for anyway). :class:`ValueRecorder` keeps those
``(choices, loss)`` pairs; :func:`fit_values` fits an additive model
``loss(arch) ~ sum_t V[t, c_t]`` to them by least squares: the agent's learned value of each
choice of each free dimension (for a mixture: each interval expert's width/depth choice). A
choice never sampled is given its dimension's worst fitted value (pessimistic).

:func:`knapsack_decode` then solves the multiple-choice knapsack on ``V`` exactly -- minimum
predicted loss with trajectory MACs within the budget -- by dynamic programming over a MACs grid
(the space's first-order cost model, :func:`router.objective.choice_macs_deltas`; the exact MACs
of the result are checked and the grid capacity bisected down if the first-order model
overshoots). It costs no loss evaluation. :func:`bounded_repair` then spends at most
``max_evaluations`` exact evaluations on the single moves and one-down-one-up exchanges the
values rank closest to the decode (where the additive model's error could flip the order).

Example:
    >>> from router.synthetic import SyntheticMixture
    >>> bench = SyntheticMixture.default(seed=0, num_experts=2, num_blocks=3, num_skips=1)
    >>> values = bench.value_table()  # the exact additive values of this benchmark
    >>> arch = knapsack_decode(bench.space, values, 0.5 * bench.base_macs)
    >>> bench.space.macs(arch) <= 0.5 * bench.base_macs, round(bench.loss(arch) / bench.optimum(0.5).loss, 6)
    (True, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from router.objective import choice_macs_deltas
from search_spaces import Arch, SearchSpace
from search_spaces.errors import UserError

__all__ = ["RepairRecord", "ValueRecorder", "bounded_repair", "fit_values", "knapsack_decode"]

ArchLoss = Callable[[Arch], float]


@dataclass
class ValueRecorder:
    """The hard samples of training and their task losses (what :func:`fit_values` fits)."""

    choices: list[np.ndarray] = field(default_factory=list)  # each (B, T) choice indices
    losses: list[np.ndarray] = field(default_factory=list)  # each (B,)

    def add(self, w: torch.Tensor, task: torch.Tensor) -> None:
        """Record padded one-hot samples ``w`` ``(B, T, C)`` and their losses ``(B,)``."""
        self.choices.append(w.detach().argmax(dim=-1).cpu().numpy())
        self.losses.append(task.detach().to(torch.float64).cpu().numpy())

    def __len__(self) -> int:
        return int(sum(len(x) for x in self.losses))


def fit_values(recorder: ValueRecorder, num_choices: Sequence[int], ridge: float = 1e-6) -> torch.Tensor:
    """Least-squares additive values ``(T, C)`` (float64; padded entries ``+inf``).

    Each dimension's values are centred on its sampled choices; a choice never sampled gets
    its dimension's largest (worst) fitted value.

    Example:
        >>> rec = ValueRecorder()
        >>> w = torch.nn.functional.one_hot(torch.tensor([[0, 1], [1, 0], [1, 1], [0, 0]]), 2).float()
        >>> rec.add(w, torch.tensor([1.0, 2.0, 3.0, 0.0]))  # loss = 2 * [c0 = 1] + 1 * [c1 = 1]
        >>> v = fit_values(rec, [2, 2])
        >>> [round(float(v[0, 1] - v[0, 0]), 4), round(float(v[1, 1] - v[1, 0]), 4)]
        [2.0, 1.0]
    """
    t_count, c_max = len(num_choices), max(num_choices)
    out = torch.full((t_count, c_max), math.inf, dtype=torch.float64)
    if len(recorder) == 0:
        raise UserError("no training samples recorded: the knapsack decode needs a trained agent (steps > 0)")
    idx = np.concatenate(recorder.choices, axis=0)  # (N, T)
    y = np.concatenate(recorder.losses, axis=0)  # (N,)
    offsets = np.concatenate([[0], np.cumsum(num_choices)[:-1]])  # (T,)
    cols = idx + offsets[None, :]  # (N, T)
    n_cols = int(sum(num_choices))
    x = np.zeros((len(y), n_cols))  # (N, sum C)
    np.put_along_axis(x, cols, 1.0, axis=1)
    seen = x.sum(axis=0) > 0  # (sum C,)
    xs = x[:, seen]
    mean = y.mean()
    gram = xs.T @ xs + ridge * max(1.0, float(np.trace(xs.T @ xs)) / max(xs.shape[1], 1)) * np.eye(xs.shape[1])
    coef = np.linalg.solve(gram, xs.T @ (y - mean))
    full = np.full(n_cols, np.nan)
    full[seen] = coef
    for t, n in enumerate(num_choices):
        v = full[offsets[t]: offsets[t] + n]
        ok = ~np.isnan(v)
        v = v - v[ok].mean()
        v[~ok] = v[ok].max()
        out[t, :n] = torch.from_numpy(v)
    return out


def _dp(values: np.ndarray, costs: np.ndarray, capacity: int) -> list[int] | None:
    """Multiple-choice knapsack: minimum ``sum values[t, c_t]`` with ``sum costs[t, c_t] <=
    capacity`` (integer costs >= 0, padded values ``inf``); the choice per group or None."""
    t_count = values.shape[0]
    best = np.zeros(capacity + 1)  # best[c]: min value of the groups so far within cost c
    picks = np.zeros((t_count, capacity + 1), dtype=np.int16)
    for t in range(t_count):
        new = np.full(capacity + 1, np.inf)
        for c in range(values.shape[1]):
            v, k = values[t, c], int(costs[t, c])
            if not np.isfinite(v) or k > capacity:
                continue
            cand = np.full(capacity + 1, np.inf)
            cand[k:] = best[: capacity + 1 - k] + v
            better = cand < new
            new[better] = cand[better]
            picks[t, better] = c
        best = new
    if not np.isfinite(best[capacity]):
        return None
    cap, out = capacity, [0] * t_count
    for t in range(t_count - 1, -1, -1):
        out[t] = int(picks[t, cap])
        cap -= int(costs[t, out[t]])
    return out


def knapsack_decode(space: SearchSpace, values: torch.Tensor, budget_macs: float, *, max_cells: int = 20000,
                    iterations: int = 16) -> Arch:
    """The arch of least predicted loss ``sum_t values[t, c_t]`` within ``budget_macs`` (no loss evaluation).

    The MACs of each choice are the first-order model (the full arch with that one dimension
    changed); integer MACs with a common divisor are solved exactly when the grid has at most
    ``max_cells`` cells, else on a grid of ``max_cells`` cells (costs rounded up). When the
    exact MACs of the result exceed the budget (depth/width interplay), the grid capacity is
    bisected down (MACs only). Falls back to the smallest arch when nothing fits.

    Raises:
        UserError: the smallest arch exceeds the budget.
    """
    smallest = space.smallest()
    if space.macs(smallest) > budget_macs + 1e-9:
        raise UserError(f"budget of {budget_macs:.4g} MACs is below the smallest arch's {space.macs(smallest):.4g} MACs")
    dims = space.free_dimensions()
    deltas = choice_macs_deltas(space).numpy()  # (T, C), <= 0 mostly (relative to the full arch)
    v = values.detach().cpu().numpy().astype(np.float64)  # (T, C)
    pad = ~np.isfinite(v)
    lo = np.where(pad, np.inf, deltas).min(axis=1)  # (T,) cheapest choice per dimension
    rel = np.where(pad, 0.0, deltas - lo[:, None])  # (T, C) >= 0
    free_cap = budget_macs - (float(space.macs(space.full())) + float(lo.sum()))
    if free_cap < 0:
        return smallest
    positive = rel[(rel > 0) & ~pad]
    integral = positive.size > 0 and np.allclose(positive, np.round(positive), atol=1e-6)
    unit = float(np.gcd.reduce(np.round(positive).astype(np.int64))) if integral else 0.0
    if not integral or free_cap / unit > max_cells:
        unit = max(free_cap, 1e-12) / max_cells
        cost = np.ceil(rel / unit - 1e-9).astype(np.int64)
    else:
        cost = np.round(rel / unit).astype(np.int64)
    cost[pad] = 0

    def solve(capacity: int) -> Arch | None:
        pick = _dp(v, cost, capacity)
        if pick is None:
            return None
        arch = space.repair(space.complete({d.name: d.choices[c] for d, c in zip(dims, pick)}))
        return arch if space.macs(arch) <= budget_macs + 1e-9 else None

    top = int(math.floor(free_cap / unit + 1e-9))
    found = solve(top)
    if found is not None:
        return found
    a, b, best = 0, top, None  # first-order MACs overshoot: the largest capacity whose arch fits
    for _ in range(iterations):
        if a > b:
            break
        mid = (a + b) // 2
        got = solve(mid)
        if got is not None:
            best, a = got, mid + 1
        else:
            b = mid - 1
    return best if best is not None else smallest


@dataclass(frozen=True)
class RepairRecord:
    """What :func:`bounded_repair` did: exact evaluations spent (the decode's own included) and
    moves accepted."""

    evaluations: int
    moves: int


def bounded_repair(space: SearchSpace, arch: Arch, budget_macs: float, arch_loss: ArchLoss, values: torch.Tensor,
                   max_evaluations: int) -> tuple[Arch, RepairRecord]:
    """At most ``max_evaluations`` exact evaluations around ``arch`` (which must fit the budget).

    The first evaluation scores ``arch``; the rest score, in order of predicted loss change
    (``values`` of the new choices minus the old, smallest first), the single moves and
    one-down-one-up exchanges that fit the budget; the best improvement found is taken and the
    ranking restarts from it, until the evaluations are spent or no candidate improves.
    ``max_evaluations = 0`` evaluates nothing.
    """
    if max_evaluations <= 0:
        return arch, RepairRecord(0, 0)
    v = values.detach().cpu().numpy()  # (T, C)
    deltas = choice_macs_deltas(space).numpy()  # (T, C) first-order MACs
    dims = space.free_dimensions()
    cache: dict[Arch, float] = {}

    def score(a: Arch) -> float:
        if a not in cache:
            cache[a] = float(arch_loss(a))
        return cache[a]

    cur, moves = arch, 0
    score(cur)
    while len(cache) < max_evaluations:
        improved = None
        for cand in _ranked_neighbours(space, dims, cur, budget_macs, v, deltas):
            if cand in cache:
                continue
            if len(cache) >= max_evaluations:
                break
            if score(cand) < score(cur) - 1e-12 and (improved is None or score(cand) < score(improved)):
                improved = cand
        if improved is None:
            break
        cur, moves = improved, moves + 1
    return cur, RepairRecord(len(cache), moves)


def _ranked_neighbours(space: SearchSpace, dims: Sequence, arch: Arch, budget_macs: float, v: np.ndarray,
                       deltas: np.ndarray):
    """Single moves and one-down-one-up pairs that fit the budget, by predicted loss change
    (a generator: an arch is built only when reached)."""
    cur = np.array([d.index(arch[d.name]) for d in dims])  # (T,)
    t_idx = np.arange(len(dims))
    dv = v - v[t_idx, cur][:, None]  # (T, C) predicted loss change of one move
    dm = deltas - deltas[t_idx, cur][:, None]  # (T, C) first-order MACs change
    slack = budget_macs - float(space.macs(arch))
    ok = np.isfinite(dv)
    ok[t_idx, cur] = False
    singles = np.argwhere(ok)  # (M, 2)
    sv, sm = dv[ok], dm[ok]  # (M,)
    entries = [(float(sv[i]), (int(singles[i, 0]), int(singles[i, 1])),) for i in range(len(sv))]
    down = sm < 0
    pv = sv[:, None] + sv[None, :]  # (M, M)
    pm = sm[:, None] + sm[None, :]
    pair_ok = down[:, None] & ~down[None, :] & (singles[:, 0][:, None] != singles[:, 0][None, :])
    pair_ok &= pm <= slack + 1e-9
    ii, jj = np.nonzero(pair_ok)
    entries += [(float(pv[i, j]), (int(singles[i, 0]), int(singles[i, 1])), (int(singles[j, 0]), int(singles[j, 1])))
                for i, j in zip(ii, jj)]
    entries.sort(key=lambda e: e[0])
    free = {d.name: arch[d.name] for d in dims}
    for entry in entries:
        vals = dict(free)
        for t, c in entry[1:]:
            vals[dims[t].name] = dims[t].choices[c]
        cand = space.repair(space.complete(vals))
        if cand != arch and space.macs(cand) <= budget_macs + 1e-9:
            yield cand
