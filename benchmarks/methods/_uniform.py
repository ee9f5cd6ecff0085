"""``uniform``: every interval's expert at the same width, the largest meeting the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.methods._mixture import MixtureMethod

__all__ = ["UniformMethod"]


class UniformMethod(MixtureMethod):
    """Every expert at the largest uniform width meeting the budget
    (:meth:`UNetSpace.uniform <search_spaces.UNetSpace.uniform>`), fine-tuned like the others;
    the allocation is written by this method to ``allocations/uniform-<b>.json``."""

    name = "uniform"
    label = "uniform width"
    color = "#2ca02c"
    marker = "^"
    cost = "none (a rule)"

    def write_allocation(self, ctx: Any, budget: float, path: Path) -> str | None:
        """Write ``path`` (kept byte-identical when it already holds the same allocation); the
        reason when no uniform width meets the budget."""
        from benchmarks.static_pruning import uniform_fraction_arch
        from experts.allocation import Allocation

        intervals, supernets = ctx.experts()
        space = supernets[0].space
        found = uniform_fraction_arch(space, budget)
        if found is None:
            return f"no uniform width meets budget {budget:g} (the narrowest uniform arch is over it)"
        arch, fraction = found
        steps = intervals.steps_per_interval(ctx.timesteps)
        macs = int(space.macs(arch))
        alloc = Allocation(method=self.name, budget_ratio=float(budget), intervals=intervals,
                           archs=tuple(arch for _ in steps), macs_per_expert=tuple(macs for _ in steps),
                           steps_per_expert=tuple(steps), base_trajectory_macs=int(space.total_macs) * sum(steps),
                           info={"width_fraction": fraction,
                                 "rule": "largest UNetSpace.uniform(fraction) meeting the budget"})
        self.save_allocation(alloc, path)
        return None
