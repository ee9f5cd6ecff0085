"""``uniform_steps``: every expert at half width, with as many evenly spaced steps as the budget
buys: the joint space's simplest rule, without a proxy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

from benchmarks.methods._mixture import MixtureMethod

__all__ = ["UniformStepsMethod"]


class UniformStepsMethod(MixtureMethod):
    """Every interval's expert at :attr:`width_fraction` of full width
    (:meth:`UNetSpace.uniform <search_spaces.UNetSpace.uniform>`), sampled along
    ``floor(b x sampling.num_steps x full MACs / expert MACs)`` evenly spaced steps, fine-tuned
    like every mixture (``bench.finetune_target``). Where fewer steps trade steps for nothing,
    this rule trades width for steps. The allocation is written by this method to
    ``allocations/uniform_steps-<b>.json``; a subclass with another :attr:`width_fraction` and
    ``name`` is another rule."""

    name = "uniform_steps"
    label = "uniform half width, more steps"
    color = "#17becf"
    marker = "X"
    cost = "none (a rule)"
    #: Width of every expert, as a fraction of full (the nearest choice of each dimension).
    width_fraction: ClassVar[float] = 0.5

    def write_allocation(self, ctx: Any, budget: float, path: Path) -> str | None:
        """Write ``path`` (kept byte-identical when it already holds the same allocation)."""
        from experts.allocation import Allocation
        from experts.schedule import StepSchedule
        from nas.sampling import sampling_timesteps

        intervals, supernets = ctx.experts()
        space = supernets[0].space
        arch = space.uniform(self.width_fraction)
        macs, total = int(space.macs(arch)), int(space.total_macs)
        n_ref = ctx.cfg.sampling.num_steps
        n = math.floor(budget * n_ref * total / macs + 1e-9)
        if n < 1:
            return f"width {self.width_fraction:g} costs more than budget {budget:g} in one step"
        schedule = StepSchedule.from_timesteps(intervals, sampling_timesteps(ctx.scheduler, n))
        steps = schedule.steps_per_interval
        alloc = Allocation(method=self.name, budget_ratio=float(budget), intervals=intervals,
                           archs=tuple(arch for _ in steps), macs_per_expert=tuple(macs for _ in steps),
                           steps_per_expert=tuple(steps), base_trajectory_macs=total * n_ref,
                           info={"width_fraction": self.width_fraction, "num_steps": n,
                                 "rule": "every expert at the width fraction, the most evenly spaced steps that fit"},
                           schedule=schedule)
        self.save_allocation(alloc, path)
        return None
