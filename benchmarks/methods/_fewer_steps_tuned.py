"""``fewer_steps_tuned``: the base model with fewer steps, fine-tuned for them with the mixtures'
own budget and target: what a user gets from the fine-tuning alone, without pruning or search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.methods._mixture import MixtureMethod

__all__ = ["FewerStepsTunedMethod"]


class FewerStepsTunedMethod(MixtureMethod):
    """``fewer_steps``'s schedule (``floor(b x sampling.num_steps)`` evenly spaced steps) served
    by the base model on every interval, fine-tuned like every mixture (``bench.finetune_target``:
    with ``trajectory``, each interval's copy of the base learns to take these larger steps,
    i.e. step distillation). The allocation is written by this method to
    ``allocations/fewer_steps_tuned-<b>.json``."""

    name = "fewer_steps_tuned"
    label = "base, fewer steps, fine-tuned"
    color = "#8c564b"
    marker = "1"
    cost = "none (a rule)"

    def write_allocation(self, ctx: Any, budget: float, path: Path) -> str | None:
        """Write ``path`` (kept byte-identical when it already holds the same allocation)."""
        from benchmarks.static_pruning import fewer_steps_for_budget
        from experts.allocation import Allocation
        from experts.schedule import StepSchedule
        from nas.sampling import sampling_timesteps

        intervals, supernets = ctx.experts()
        space = supernets[0].space
        n = fewer_steps_for_budget(ctx.cfg.sampling.num_steps, budget)
        schedule = StepSchedule.from_timesteps(intervals, sampling_timesteps(ctx.scheduler, n))
        steps = schedule.steps_per_interval
        full = space.full()
        macs = int(space.total_macs)
        alloc = Allocation(method=self.name, budget_ratio=float(budget), intervals=intervals,
                           archs=tuple(full for _ in steps), macs_per_expert=tuple(macs for _ in steps),
                           steps_per_expert=tuple(steps), base_trajectory_macs=macs * ctx.cfg.sampling.num_steps,
                           info={"rule": "fewer_steps's schedule, the base model on every interval"},
                           schedule=schedule, base_intervals=tuple(range(intervals.num_intervals)))
        self.save_allocation(alloc, path)
        return None
