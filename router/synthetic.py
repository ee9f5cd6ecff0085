"""A synthetic routing benchmark whose optimal allocation is known exactly.

Each expert ``k`` of a mixture has a few elastic blocks. Block ``d`` of expert ``k`` costs
``macs_coef[d] * width`` MACs per call (plus a fixed stem per expert) and adds a known,
convex-in-width loss ``sens[k, d] * (1 - width / max_width) ** gamma[d]``; one block per expert
can be skipped altogether (a depth choice) at a known loss. The mixture's loss is the
step-weighted mean of the experts' losses, and its cost is the trajectory MACs (steps x MACs).
Because both are additive over (expert, block) groups, the best allocation under a budget is a
multiple-choice knapsack, solved exactly by dynamic programming over the (integer) MACs.

The relaxed task loss is exact on one-hots and linear in the weights, so the router sees the
same objective the DP optimises.

Example:
    >>> bench = SyntheticMixture.default(seed=0)
    >>> opt = bench.optimum(0.5)
    >>> bench.space.macs(opt.arch) <= 0.5 * bench.base_macs
    True
    >>> round(bench.loss(bench.space.full()), 6)
    0.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from experts.intervals import Intervals
from experts.mixture_space import MixtureSpace
from search_spaces import Arch, Dimension, SearchSpace, SimpleSpace

__all__ = ["KnapsackSolution", "SyntheticMixture"]


@dataclass(frozen=True)
class KnapsackSolution:
    """An allocation of the synthetic benchmark with its loss and cost."""

    arch: Arch
    loss: float
    macs: int
    ratio: float


class SyntheticMixture:
    """Mixture of ``K`` experts with known per-block quality-vs-size curves.

    Args:
        steps_per_expert: sampling steps each expert serves (the trajectory weights).
        widths: the width choices of every elastic block (same for all blocks).
        macs_coef: ``(blocks,)`` MACs per unit of width of each elastic block (integers).
        gamma: ``(K, blocks)`` curvature of each loss curve ``(1 - w / max_w) ** gamma``
            (``> 1`` convex; ``< 1`` concave: the first step down hurts most per MAC, which
            fools a one-step-at-a-time greedy method).
        sensitivity: ``(K, blocks)`` loss scale per expert and block.
        skip_macs: ``(skips,)`` MACs of each skippable block (one depth choice each).
        skip_loss: ``(K, skips)`` loss added when an expert skips that block.
        stem_macs: fixed (non-elastic) MACs per call of every expert.
    """

    def __init__(
        self,
        steps_per_expert: Sequence[int],
        widths: Sequence[int],
        macs_coef: Sequence[int],
        gamma: np.ndarray,
        sensitivity: np.ndarray,
        skip_macs: Sequence[int],
        skip_loss: np.ndarray,
        stem_macs: int,
    ) -> None:
        self.steps_per_expert = tuple(int(s) for s in steps_per_expert)
        self.widths = tuple(int(w) for w in widths)
        self.macs_coef = tuple(int(c) for c in macs_coef)
        self.skip_macs = tuple(int(m) for m in skip_macs)
        k, nb, ns = len(self.steps_per_expert), len(self.macs_coef), len(self.skip_macs)
        self.gamma = np.asarray(gamma, dtype=np.float64)
        self.sensitivity = np.asarray(sensitivity, dtype=np.float64)
        self.skip_loss = np.asarray(skip_loss, dtype=np.float64).reshape(k, ns)
        self.stem_macs = int(stem_macs)
        if self.sensitivity.shape != (k, nb) or self.gamma.shape != (k, nb):
            raise ValueError(f"sensitivity and gamma must have shape (K, blocks) = {(k, nb)}")
        self.step_frac = np.asarray(self.steps_per_expert, dtype=np.float64) / sum(self.steps_per_expert)

        parts: dict[str, SearchSpace] = {}
        self._tables: dict[str, tuple[list[int], list[float]]] = {}  # full dim name -> (macs, loss) per choice
        frac = np.asarray(self.widths, dtype=np.float64) / max(self.widths)
        for e in range(k):
            dims = [Dimension(f"b{d}.width", self.widths, "width") for d in range(nb)]
            dims += [Dimension(f"s{j}.depth", (False, True), "depth") for j in range(ns)]
            parts[MixtureSpace.part_name(e)] = SimpleSpace(dims, macs_fn=self._expert_macs)
            for d in range(nb):
                self._tables[f"e{e}/b{d}.width"] = (
                    [self.macs_coef[d] * w for w in self.widths],
                    [float(x) for x in self.sensitivity[e, d] * (1.0 - frac) ** self.gamma[e, d]],
                )
            for j in range(ns):
                self._tables[f"e{e}/s{j}.depth"] = ([0, self.skip_macs[j]], [float(self.skip_loss[e, j]), 0.0])
        self.intervals = Intervals.uniform(1000, k)
        self.mixture = MixtureSpace(list(parts.values()), self.steps_per_expert, self.intervals)
        self.space = self.mixture.space
        self.base_macs = self.space.macs(self.space.full())
        names = self.space.free_names()
        self._loss_t = {n: torch.tensor(self._tables[n][1], dtype=torch.float64) for n in names}
        self._weight = {n: float(self.step_frac[int(n.split("/")[0][1:])]) for n in names}
        width = max(len(self._tables[n][1]) for n in names)
        table = torch.zeros(len(names), width, dtype=torch.float64)  # (T, C) step-weighted losses
        for t, n in enumerate(names):
            table[t, : len(self._tables[n][1])] = self._weight[n] * self._loss_t[n]
        self._table = table

    # ----------------------------------------------------------------- construction
    @classmethod
    def default(cls, seed: int = 0, num_experts: int = 4, num_blocks: int = 6, num_skips: int = 2,
                widths: Sequence[int] = (8, 16, 24, 32, 40, 48, 56, 64)) -> "SyntheticMixture":
        """A seeded instance (default: 4 experts x (6 width blocks of 8 choices + 2 skippable)).

        Experts differ in overall sensitivity (x1 to x6), in which blocks matter most and in
        the shape of each curve (convex and concave), and serve different numbers of steps,
        so the optimal split is far from uniform.
        """
        rng = np.random.default_rng(seed)
        k = num_experts
        expert_scale = np.geomspace(1.0, 6.0, k)[rng.permutation(k)]
        sens = expert_scale[:, None] * rng.lognormal(0.0, 0.6, size=(k, num_blocks))
        gamma = np.exp(rng.uniform(np.log(0.6), np.log(3.0), size=(k, num_blocks)))
        skip_loss = expert_scale[:, None] * rng.uniform(0.2, 0.8, size=(k, num_skips))
        steps = rng.integers(6, 16, size=k)
        macs_coef = rng.integers(1, 5, size=num_blocks)
        skip_macs = 8 * rng.integers(5, 15, size=num_skips)
        return cls(
            steps_per_expert=steps.tolist(), widths=widths, macs_coef=macs_coef.tolist(), gamma=gamma,
            sensitivity=sens, skip_macs=skip_macs.tolist(), skip_loss=skip_loss, stem_macs=40,
        )

    def _expert_macs(self, arch: Arch) -> int:
        m = self.stem_macs + sum(c * int(arch[f"b{d}.width"]) for d, c in enumerate(self.macs_coef))
        return m + sum(mj for j, mj in enumerate(self.skip_macs) if arch[f"s{j}.depth"])

    # ----------------------------------------------------------------- losses
    def task_loss(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Relaxed mixture loss: step-weighted sum of expected per-block losses (exact on one-hots)."""
        total = torch.zeros((), dtype=torch.float64)
        for name, w in weights.items():
            lt = self._loss_t[name].to(w.device)  # (n_choices,)
            total = total.to(w.device) + self._weight[name] * (w.to(torch.float64) * lt).sum()
        return total.to(torch.float32)

    def batched_task_loss(self, w: torch.Tensor) -> torch.Tensor:
        """:meth:`task_loss` for padded weights ``(B, T, C)`` in free-dimension order -> ``(B,)``."""
        return (w.to(torch.float64) * self._table.to(w.device)[None]).sum(dim=(1, 2)).to(torch.float32)

    def loss(self, arch: Mapping[str, object]) -> float:
        """Exact mixture loss of a discrete arch."""
        self.space.validate(arch)
        total = 0.0
        for d in self.space.free_dimensions():
            total += self._weight[d.name] * self._tables[d.name][1][d.index(arch[d.name])]
        return float(total)

    def value_table(self) -> torch.Tensor:
        """``(T, C)`` exact step-weighted loss of each choice of each free dimension (padded:
        ``inf``): the additive values a learned value model should recover on this benchmark."""
        table = self._table.clone()
        for t, n in enumerate(self.space.free_names()):
            table[t, len(self._tables[n][1]):] = float("inf")
        return table

    # ----------------------------------------------------------------- exact optimum
    def optimum(self, budget_ratio: float) -> KnapsackSolution:
        """The minimum-loss arch whose trajectory MACs are ``<= budget_ratio * base_macs``.

        Multiple-choice knapsack by DP over integer trajectory MACs (the stems are a fixed cost).
        """
        stems = sum(s * self.stem_macs for s in self.steps_per_expert)
        capacity = int(np.floor(budget_ratio * self.base_macs + 1e-9)) - stems
        groups = []
        for d in self.space.free_dimensions():
            part = d.name.split("/")[0]
            steps = int(self.space.weights[part])
            macs, losses = self._tables[d.name]
            groups.append((d, [steps * m for m in macs], [self._weight[d.name] * x for x in losses]))
        if capacity < sum(min(c) for _, c, _ in groups):
            raise ValueError(f"budget_ratio {budget_ratio} is below the smallest arch's MACs ratio")
        unit = int(np.gcd.reduce([c for _, costs, _ in groups for c in costs if c > 0]))
        groups = [(d, [c // unit for c in costs], losses) for d, costs, losses in groups]
        capacity //= unit
        inf = np.inf
        best = np.zeros(capacity + 1)  # best[c]: min loss of groups so far with cost <= c
        picks = np.zeros((len(groups), capacity + 1), dtype=np.int16)
        for g, (_, costs, losses) in enumerate(groups):
            new = np.full(capacity + 1, inf)
            for j, (c, x) in enumerate(zip(costs, losses)):
                if c > capacity:
                    continue
                cand = np.full(capacity + 1, inf)
                cand[c:] = best[: capacity + 1 - c] + x
                better = cand < new
                new[better] = cand[better]
                picks[g, better] = j
            best = new
        c = capacity
        values: dict[str, object] = {}
        for g in range(len(groups) - 1, -1, -1):
            d, costs, _ = groups[g]
            j = int(picks[g, c])
            values[d.name] = d.choices[j]
            c -= costs[j]
        arch = self.space.complete(values)
        m = self.space.macs(arch)
        return KnapsackSolution(arch, self.loss(arch), m, m / self.base_macs)

    def brute_force(self, budget_ratio: float, limit: int = 2_000_000) -> KnapsackSolution:
        """Exhaustive optimum (only for tiny instances; cross-checks :meth:`optimum`)."""
        if self.space.cardinality() > limit:
            raise ValueError(f"space has {self.space.cardinality()} archs, more than limit={limit}")
        free = self.space.free_dimensions()
        best: KnapsackSolution | None = None
        cap = budget_ratio * self.base_macs + 1e-9
        for idx in np.ndindex(*[len(d.choices) for d in free]):
            arch = self.space.complete({d.name: d.choices[i] for d, i in zip(free, idx)})
            m = self.space.macs(arch)
            if m <= cap:
                x = self.loss(arch)
                if best is None or x < best.loss:
                    best = KnapsackSolution(arch, x, m, m / self.base_macs)
        if best is None:
            raise ValueError(f"no arch fits budget_ratio {budget_ratio}")
        return best
