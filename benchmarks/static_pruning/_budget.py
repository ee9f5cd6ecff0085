"""Static pruning to a MACs budget: :func:`prune_to_budget` searches torch-pruning's channel ratio
(:func:`_ratio_search`: a coarse scan from the analytic guess outwards, then bisection; every layer
at the same ratio first, global channel ranking as well when that cannot come close) and returns a
:class:`StaticPruneResult`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmarks.static_pruning._surgery import prune_once, taylor_gradients
from search_spaces.errors import UserError

log = logging.getLogger("benchmarks.static_pruning")  # one logger for the package's log lines

__all__ = ["StaticPruneResult", "prune_to_budget"]

_MAX_PRUNING_RATIO = 0.95


@dataclass(frozen=True)
class StaticPruneResult:
    """A statically pruned model and how it was obtained.

    Attributes:
        model: the pruned diffusers UNet (eval mode).
        macs: fvcore MACs of one call at batch 1 (attention included).
        base_macs: the same for the unpruned model.
        pruning_ratio: torch-pruning's per-layer channel ratio that gave ``model``.
        importance: ``taylor`` or ``magnitude``.
        tries: every ratio tried, in order, with the MACs ratio it gave.
        wall_s: seconds spent (gradients, pruning, counting).
    """

    model: nn.Module
    macs: int
    base_macs: int
    budget_ratio: float
    pruning_ratio: float
    importance: str
    tries: tuple[tuple[float, float], ...] = ()
    wall_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def macs_ratio(self) -> float:
        """MACs of the pruned model / MACs of the base model."""
        return self.macs / self.base_macs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no weights)."""
        return {
            "budget_ratio": self.budget_ratio, "macs": self.macs, "base_macs": self.base_macs,
            "macs_ratio": self.macs_ratio, "pruning_ratio": self.pruning_ratio, "importance": self.importance,
            "tries": [list(t) for t in self.tries], "wall_s": self.wall_s,
            "params": int(sum(p.numel() for p in self.model.parameters())), **self.info,
        }


def _ratio_search(
    attempt: Callable[[float], tuple[nn.Module, int]],
    budget_ratio: float,
    base_macs: int,
    max_iterations: int,
    tolerance: float,
) -> tuple[float, nn.Module, int] | None:
    """Best feasible ``(ratio, model, macs)`` (largest MACs <= budget) in at most ``max_iterations``
    calls of ``attempt``, or None.

    torch-pruning's MACs are not monotone in the ratio on small models, so: a coarse scan ordered
    from the analytic guess ``1 - sqrt(budget)`` outwards, then bisection between the best
    feasible ratio and the largest infeasible ratio below it.
    """
    limit = budget_ratio * base_macs
    guess = min(max(1.0 - math.sqrt(budget_ratio), 0.01), _MAX_PRUNING_RATIO)  # MACs ~ (1 - ratio)^2
    n_scan = max(2, int(max_iterations) // 2)
    grid = [round(_MAX_PRUNING_RATIO * (i + 1) / n_scan, 6) for i in range(n_scan)]
    grid = sorted({guess, *grid}, key=lambda r: (abs(r - guess), r))
    best: tuple[float, nn.Module, int] | None = None
    infeasible: list[float] = []
    calls = 0

    def close_enough() -> bool:
        return best is not None and best[2] >= limit - tolerance * base_macs

    for ratio in grid:
        if calls >= max_iterations or close_enough():
            break
        model, macs = attempt(ratio)
        calls += 1
        if macs <= limit:
            if best is None or macs > best[2]:
                best = (ratio, model, macs)
        else:
            infeasible.append(ratio)
    if best is None:
        return None
    hi = best[0]
    lo = max([r for r in infeasible if r < hi], default=0.0)
    while calls < max_iterations and not close_enough() and hi - lo > 1e-3:
        ratio = (lo + hi) / 2.0
        model, macs = attempt(ratio)
        calls += 1
        if macs <= limit:
            hi = ratio
            if macs > best[2]:
                best = (ratio, model, macs)
        else:
            lo = ratio
    return best


def prune_to_budget(
    unet: nn.Module,
    budget_ratio: float,
    *,
    importance: str = "taylor",
    images: torch.Tensor | None = None,
    scheduler_config: Mapping[str, Any] | None = None,
    taylor_batches: int = 4,
    batch_size: int = 32,
    max_iterations: int = 12,
    tolerance: float = 0.02,
    seed: int = 0,
    unet_kwargs: Callable[[int], dict] | None = None,
    gradients: Mapping[str, torch.Tensor] | None = None,
) -> StaticPruneResult:
    """Prune ``unet`` (a copy) so that its fvcore MACs are at most ``budget_ratio`` of the base's.

    Searches torch-pruning's channel ratio (a coarse scan from the analytic guess
    ``1 - sqrt(budget)`` outwards, then bisection), at most ``max_iterations`` prunings with every
    layer at the same ratio and, if that does not come within ``tolerance`` below the budget, as
    many with global channel ranking; returns the feasible model with the largest MACs seen.

    ``gradients`` (from :func:`taylor_gradients`) may be passed to prune several budgets with the
    same Taylor importance; otherwise they are computed here from ``images``.

    Raises:
        UserError: the budget is out of (0, 1], or not reachable even at the largest ratio.
    """
    from search_spaces.macs import count_unet_macs

    if not 0.0 < budget_ratio <= 1.0:
        raise UserError(f"budget_ratio must be in (0, 1], got {budget_ratio}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    t0 = time.perf_counter()
    base_macs = int(count_unet_macs(unet))
    grads = gradients
    if importance == "taylor" and grads is None:
        if images is None or scheduler_config is None:
            raise ValueError("taylor importance needs images and scheduler_config (or precomputed gradients)")
        grads = taylor_gradients(unet, images, scheduler_config, num_batches=taylor_batches,
                                 batch_size=batch_size, seed=seed, unet_kwargs=unet_kwargs)
    attempts = _Attempts(unet, importance, grads, base_macs)
    (ratio, model, macs), mode = _best_pruning(attempts, budget_ratio, max_iterations, tolerance)
    tries = [(r, m) for _, r, m in attempts.tries]
    result = StaticPruneResult(
        model=model.eval(), macs=int(macs), base_macs=base_macs, budget_ratio=float(budget_ratio),
        pruning_ratio=float(ratio), importance=importance, tries=tuple(tries),
        wall_s=time.perf_counter() - t0,
        info={"taylor_batches": taylor_batches if importance == "taylor" else 0, "tolerance": tolerance,
              "max_iterations": max_iterations, "mode": mode, "tries_by_mode": [list(t) for t in attempts.tries]},
    )
    log.info("static pruning (%s, %s) at budget %g: ratio %.3f -> %.3f of the base MACs after %d prunings (%.1f s)",
             importance, mode, budget_ratio, ratio, result.macs_ratio, len(tries), result.wall_s)
    return result


class _Attempts:
    """Prunes ``unet`` at a ratio and counts the result's MACs, recording every try as
    ``(mode, ratio, MACs ratio)`` in :attr:`tries`."""

    def __init__(self, unet: nn.Module, importance: str, gradients: Mapping[str, torch.Tensor] | None,
                 base_macs: int) -> None:
        self.unet = unet
        self.importance = importance
        self.gradients = gradients
        self.base_macs = base_macs
        self.tries: list[tuple[str, float, float]] = []

    def __call__(self, ratio: float, global_pruning: bool) -> tuple[nn.Module, int]:
        from search_spaces.macs import count_unet_macs

        model = prune_once(self.unet, ratio, importance=self.importance, gradients=self.gradients,
                           global_pruning=global_pruning)
        macs = int(count_unet_macs(model))
        self.tries.append(("global" if global_pruning else "local", round(float(ratio), 6), macs / self.base_macs))
        log.debug("pruning ratio %.4f (%s) -> MACs ratio %.4f", ratio, self.tries[-1][0], macs / self.base_macs)
        return model, macs


def _best_pruning(
    attempt: _Attempts, budget_ratio: float, max_iterations: int, tolerance: float
) -> tuple[tuple[float, nn.Module, int], str]:
    """The best feasible ``(ratio, model, macs)`` and the mode (``local`` or ``global``) it came from.

    Every layer is pruned by the same ratio first (Diff-Pruning's setting); on narrow models
    GroupNorm groups make its MACs jump (a 2-channel group loses half or nothing), so if that does
    not come within ``tolerance`` of the budget, global ranking (per-layer ratios differ) is tried
    with the same number of prunings and the better feasible model kept.
    """
    base_macs = attempt.base_macs
    if budget_ratio >= 1.0:
        model, macs = attempt(0.0, False)
        return (0.0, model, macs), "local"
    limit = budget_ratio * base_macs
    mode = "local"
    best = _ratio_search(lambda r: attempt(r, False), budget_ratio, base_macs, max_iterations, tolerance)
    if best is None or best[2] < limit - tolerance * base_macs:
        other = _ratio_search(lambda r: attempt(r, True), budget_ratio, base_macs, max_iterations, tolerance)
        if other is not None and (best is None or other[2] > best[2]):
            best, mode = other, "global"
    if best is None:
        raise UserError(
            f"static pruning cannot reach {budget_ratio:g} of the base MACs: pruning ratios up to "
            f"{_MAX_PRUNING_RATIO} give at least {min(t[2] for t in attempt.tries):.3f}; raise the budget"
        )
    return best, mode
