"""The router's objective: task loss plus a resource loss on trajectory MACs.

``loss = task_loss(weights) + resource_weight * log(max(r, p) / min(r, p))`` (or its
augmented-Lagrangian form, see :class:`RouterObjective`) where ``r`` is the
achieved MACs ratio of the relaxed arch (for a mixture ``ProductSpace`` whose part weights are
the sampling steps each expert serves, that is the *trajectory* MACs ratio), computed through
the differentiable cost model, and ``p`` is the target budget ratio.

The task loss is any callable ``task_loss(weights) -> Tensor`` where ``weights`` maps each free
dimension name of the space (for a ``ProductSpace``: ``"<expert>/<dim>"``) to a ``(n_choices,)``
tensor (straight-through one-hot or probabilities). For a mixture,
:meth:`experts.MixtureSpace.split_values` turns that into one mapping per expert, which is what
``ElasticUNet.set_active_relaxed`` takes.

Example:
    >>> import torch
    >>> from search_spaces import Dimension, SimpleSpace
    >>> space = SimpleSpace([Dimension("w", (1, 2, 4))], macs_fn=lambda a: 10 * a["w"])
    >>> obj = RouterObjective(space, task_loss=lambda w: (w["w"] * torch.tensor([3.0, 1.0, 0.0])).sum(),
    ...                       mode="log_ratio")
    >>> terms = obj({"w": torch.tensor([0.0, 1.0, 0.0])}, budget_ratio=0.5)
    >>> round(float(terms.ratio), 3), round(float(terms.resource), 3), float(terms.task)
    (0.5, 0.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from search_spaces import ProductSpace, SearchSpace

__all__ = [
    "RESOURCE_MODES",
    "ObjectiveTerms",
    "RouterObjective",
    "TaskLoss",
    "BatchedTaskLoss",
    "choice_macs_deltas",
    "relaxed_macs",
    "resource_loss",
]

TaskLoss = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


def resource_loss(ratio: torch.Tensor, budget_ratio: torch.Tensor | float) -> torch.Tensor:
    """``log(max(r, p) / min(r, p)) = |log r - log p|``: zero exactly at the target.

    Example:
        >>> import math
        >>> round(float(resource_loss(torch.tensor(0.25), 0.5)), 4) == round(math.log(2), 4)
        True
    """
    p = torch.as_tensor(budget_ratio, dtype=ratio.dtype, device=ratio.device)
    return torch.abs(torch.log(ratio.clamp_min(1e-12)) - torch.log(p))


def relaxed_macs(space: SearchSpace, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Differentiable MACs (float64 scalar on the CPU) of relaxed weights.

    For a ``ProductSpace`` this is the weighted sum of each part's own ``macs_relaxed`` (so a
    part that models depth/width interplay exactly keeps doing so); otherwise it is
    ``space.macs_relaxed``. Weights may live on any device.
    """
    if isinstance(space, ProductSpace):
        total = torch.zeros((), dtype=torch.float64)
        for part, w in space.split_values(weights).items():
            sub = relaxed_macs(space.parts[part], w)
            total = total + space.weights[part] * sub
        return total
    cpu = {k: v.to("cpu") for k, v in weights.items()}
    return space.macs_relaxed(cpu).to(torch.float64)


def choice_macs_deltas(space: SearchSpace) -> torch.Tensor:
    """``(T, C)`` float64: MACs of the full arch with free dimension ``t`` set to choice ``c``,
    minus the full arch's MACs (``T`` free dimensions in order, ``C`` the most choices; padded
    entries are 0). This is the first-order cost model of :meth:`SearchSpace.macs_relaxed`.
    """
    free = space.free_dimensions()
    full = space.full()
    base = float(space.macs(full))
    values = {n: full[n] for n in space.free_names()}
    out = torch.zeros(len(free), max(len(d.choices) for d in free), dtype=torch.float64)
    for t, d in enumerate(free):
        for c, choice in enumerate(d.choices):
            out[t, c] = float(space.macs(space.repair(space.complete({**values, d.name: choice})))) - base
    return out


def _uses_default_relaxed(space: SearchSpace) -> bool:
    """True when relaxed MACs are the base class's first-order model (exact at one-hots)."""
    if isinstance(space, ProductSpace):
        return all(_uses_default_relaxed(p) for p in space.parts.values())
    return type(space).macs_relaxed is SearchSpace.macs_relaxed


BatchedTaskLoss = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ObjectiveTerms:
    """One evaluation of the objective (tensors keep their graph).

    ``gap`` is ``log r - log p`` (positive: over budget); ``resource`` is ``|gap|``.
    """

    loss: torch.Tensor
    task: torch.Tensor
    resource: torch.Tensor
    ratio: torch.Tensor
    gap: torch.Tensor


RESOURCE_MODES = ("lagrangian", "log_ratio")


class RouterObjective:
    """Task loss plus a resource term that pulls the MACs ratio ``r`` to the target ``p``.

    Two modes, both built on ``gap = log r - log p`` (whose absolute value is the resource loss
    ``log(max(r, p) / min(r, p))``):

    - ``"log_ratio"``: ``task + w * |gap|``, a fixed exact penalty (it holds ``r`` at ``p`` once
      ``w`` exceeds the task loss's marginal value of compute, d task / d log MACs).
    - ``"lagrangian"`` (default): ``task + mu(p) * gap + w / 2 * gap**2``, with the multiplier
      ``mu(p)`` (the price of compute at budget ``p``) raised or lowered by dual ascent after
      every step (:meth:`update_dual`). At the fixed point ``r = p`` and ``mu`` is the true
      marginal value of compute, so the agent sees the task gradient, not the penalty's noise.
      For a range of budgets (the budget-conditioned agent) ``mu`` is a piecewise-linear
      function of ``log p`` on ``num_knots`` knots.

    :meth:`batch` evaluates a whole batch of padded relaxed archs ``(B, T, C)`` at once; it uses
    a vectorised MACs model when the space keeps the default first-order ``macs_relaxed``
    (same values and gradients as calling it), and ``batched_task_loss`` when given.

    Args:
        space: the search space the weights are over.
        task_loss: ``task_loss(weights) -> scalar Tensor`` (see the module docstring).
        batched_task_loss: optional ``f(w) -> (B,)`` on padded weights ``w`` of shape
            ``(B, T, C)`` (free dimensions in ``space.free_dimensions()`` order), equal to
            ``task_loss`` per row; a fast path for cheap analytic losses.
        mode: ``"lagrangian"`` or ``"log_ratio"``.
        resource_weight: ``w`` above.
        base_macs: MACs that a ratio of 1 means (default: ``space.macs(space.full())``).
        budget_range: ``(low, high)`` budgets the multiplier table covers (lagrangian mode).
        num_knots: knots of the multiplier table over ``log p``.
        multiplier_init: initial ``mu`` (a rough value of compute, in task-loss units per
            unit of log MACs).
        dual_lr: dual ascent step, as a fraction of ``resource_weight``.
    """

    def __init__(self, space: SearchSpace, task_loss: TaskLoss, *, batched_task_loss: BatchedTaskLoss | None = None,
                 mode: str = "lagrangian",
                 resource_weight: float = 1.0, base_macs: float | None = None,
                 budget_range: tuple[float, float] = (1.0, 1.0), num_knots: int = 12,
                 multiplier_init: float = 0.0, dual_lr: float = 0.05) -> None:
        if resource_weight < 0:
            raise ValueError(f"resource_weight must be >= 0, got {resource_weight}")
        if mode not in RESOURCE_MODES:
            raise ValueError(f"resource mode must be one of {RESOURCE_MODES}, got {mode!r}")
        lo, hi = (float(x) for x in budget_range)
        if not 0 < lo <= hi:
            raise ValueError(f"budget_range must satisfy 0 < low <= high, got {budget_range}")
        self.space = space
        self.task_loss = task_loss
        self.batched_task_loss = batched_task_loss
        self.mode = mode
        free = space.free_dimensions()
        self._names = tuple(d.name for d in free)
        self._num_choices = tuple(len(d.choices) for d in free)
        self._deltas = choice_macs_deltas(space) if _uses_default_relaxed(space) else None  # (T, C)
        self._full_macs = float(space.macs(space.full()))
        self._exact_cache: dict[tuple[int, ...], float] = {}
        self.resource_weight = float(resource_weight)
        self.dual_lr = float(dual_lr)
        self.base_macs = float(space.macs(space.full()) if base_macs is None else base_macs)
        if not self.base_macs > 0:
            raise ValueError("the full arch has zero MACs: a MACs ratio is undefined")
        n = 1 if math.isclose(lo, hi) else max(2, int(num_knots))
        self._log_knots = torch.linspace(math.log(lo), math.log(hi), n, dtype=torch.float64)  # (K,)
        self._mu = torch.full((n,), float(multiplier_init), dtype=torch.float64)  # (K,)

    # ----------------------------------------------------------------- multiplier table
    def _interp(self, budget_ratio: float) -> list[tuple[int, float]]:
        k = self._log_knots
        if k.numel() == 1:
            return [(0, 1.0)]
        x = min(max(math.log(budget_ratio), float(k[0])), float(k[-1]))
        i = min(int(torch.searchsorted(k, torch.tensor(x, dtype=torch.float64), right=True)) - 1, k.numel() - 2)
        i = max(i, 0)
        t = (x - float(k[i])) / float(k[i + 1] - k[i])
        return [(i, 1.0 - t), (i + 1, t)]

    def multiplier(self, budget_ratio: float) -> float:
        """The current price of compute ``mu(p)`` (0 in log_ratio mode)."""
        if self.mode != "lagrangian":
            return 0.0
        return float(sum(w * self._mu[i] for i, w in self._interp(budget_ratio)))

    def update_dual(self, budget_ratios: Sequence[float], gaps: Sequence[float]) -> None:
        """Dual ascent: ``mu(p) += dual_lr * resource_weight * mean gap`` at each budget's knots."""
        if self.mode != "lagrangian" or not len(gaps):
            return
        step = torch.zeros_like(self._mu)
        count = torch.zeros_like(self._mu)
        for p, g in zip(budget_ratios, gaps):
            for i, w in self._interp(float(p)):
                step[i] += w * float(g)
                count[i] += w
        upd = torch.where(count > 0, step / count.clamp_min(1e-12), torch.zeros_like(step))
        self._mu += self.dual_lr * self.resource_weight * upd

    def multipliers(self) -> list[tuple[float, float]]:
        """``[(budget ratio at knot, mu), ...]`` (for logs)."""
        return [(math.exp(float(k)), float(m)) for k, m in zip(self._log_knots, self._mu)]

    # ----------------------------------------------------------------- evaluation
    def ratio(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Achieved MACs ratio of relaxed weights (differentiable, float64, CPU)."""
        return relaxed_macs(self.space, weights) / self.base_macs

    def weights_dict(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(T, C)`` padded weights -> ``{free dim name: (n_choices,) view}``."""
        return {n: w[t, :k] for t, (n, k) in enumerate(zip(self._names, self._num_choices))}

    def _exact_macs(self, index: tuple[int, ...]) -> float:
        if index not in self._exact_cache:
            dims = self.space.free_dimensions()
            arch = self.space.complete({d.name: d.choices[i] for d, i in zip(dims, index)})
            self._exact_cache[index] = float(self.space.macs(self.space.repair(arch)))
        return self._exact_cache[index]

    def batch_ratio(self, w: torch.Tensor) -> torch.Tensor:
        """``(B,)`` differentiable MACs ratios of padded weights ``(B, T, C)`` (float64)."""
        if self._deltas is None:
            return torch.stack([self.ratio(self.weights_dict(w[b])).to(w.device) for b in range(w.shape[0])])
        wd = w.to(torch.float64)
        lin = self._full_macs + (wd * self._deltas.to(w.device)[None]).sum(dim=(1, 2))  # (B,)
        hard = ((wd == 0) | (wd == 1)).all(dim=(1, 2)) & ((wd.sum(dim=2) - 1).abs() < 1e-9).all(dim=1)  # (B,)
        if bool(hard.any()):
            idx = wd.argmax(dim=2).tolist()  # (B, T)
            exact = torch.tensor([self._exact_macs(tuple(row)) for row in idx], dtype=torch.float64,
                                 device=w.device)  # (B,)
            lin = torch.where(hard, lin + (exact - lin).detach(), lin)
        return lin / self.base_macs

    def batch(self, w: torch.Tensor, budget_ratios: Sequence[float]) -> ObjectiveTerms:
        """Objective terms, each of shape ``(B,)``, for padded relaxed archs ``w`` ``(B, T, C)``."""
        if w.shape[0] != len(budget_ratios):
            raise ValueError(f"{w.shape[0]} relaxed archs for {len(budget_ratios)} budgets")
        if self.batched_task_loss is not None:
            task = self.batched_task_loss(w)  # (B,)
        else:
            task = torch.stack([self.task_loss(self.weights_dict(w[b])) for b in range(w.shape[0])])  # (B,)
        if task.shape != (w.shape[0],):
            raise ValueError(f"task loss must give one scalar per relaxed arch, got shape {tuple(task.shape)}")
        r = self.batch_ratio(w)  # (B,)
        logp = torch.log(torch.as_tensor(list(budget_ratios), dtype=torch.float64, device=r.device))  # (B,)
        gap = (torch.log(r.clamp_min(1e-12)) - logp).to(task.device, task.dtype)  # (B,)
        res = gap.abs()
        if self.mode == "log_ratio":
            loss = task + self.resource_weight * res
        else:
            mu = torch.tensor([self.multiplier(float(p)) for p in budget_ratios], dtype=task.dtype,
                              device=task.device)  # (B,)
            loss = task + mu * gap + 0.5 * self.resource_weight * gap * gap
        return ObjectiveTerms(loss, task, res, r, gap)

    def __call__(self, weights: Mapping[str, torch.Tensor], budget_ratio: float) -> ObjectiveTerms:
        task = self.task_loss(weights)
        if task.dim() != 0:
            raise ValueError(f"task_loss must return a scalar tensor, got shape {tuple(task.shape)}")
        r = self.ratio(weights)
        gap = (torch.log(r.clamp_min(1e-12)) - math.log(float(budget_ratio))).to(task.device, task.dtype)
        res = gap.abs()
        if self.mode == "log_ratio":
            loss = task + self.resource_weight * res
        else:
            loss = task + self.multiplier(budget_ratio) * gap + 0.5 * self.resource_weight * gap * gap
        return ObjectiveTerms(loss, task, res, r, gap)
