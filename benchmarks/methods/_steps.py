"""``steps``: the base model at full width with a searched step schedule (steps-only search, no
pruning): the baseline that trades only steps, as a user without experts would."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from benchmarks.bench.records import normalize_cost
from benchmarks.methods._common import file_hash, inputs_key
from nas.methods import AllocationMethod, Candidate

__all__ = ["StepsMethod"]


class StepsMethod(AllocationMethod):
    """The base model sampled along the schedule of ``allocations/steps-<b>.json``, written by
    the steps-only search that ``diffnas search`` runs after the joint search
    (``schedule.joint: true``; :func:`nas.search_run.steps_search`)."""

    name = "steps"
    label = "base, searched steps"
    color = "#e377c2"
    marker = "P"
    needs: ClassVar[tuple[str, ...]] = ("experts", "search")
    cost = "steps-only search: wall time of every session and trials evaluated"

    def candidate(self, ctx: Any, budget: float | None, config_key: str) -> Candidate | str:
        """The base model along the searched schedule at ``budget``, or why it cannot run."""
        from experts.allocation import Allocation

        assert budget is not None, "steps is made for a budget"
        path = ctx.run.allocations_dir / f"{self.name}-{budget:g}.json"
        rel = path.relative_to(ctx.run.path)
        if not path.is_file():
            return f"{rel} does not exist (run `diffnas search` with schedule.joint=true and budget {budget:g})"
        try:
            alloc = Allocation.load(path)
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            return f"cannot read {rel}: {exc}"
        timesteps = alloc.timesteps()
        if timesteps is None:
            return f"{rel} has no step schedule"

        def build() -> tuple[Any, int, dict[str, Any]]:
            return ctx.base.unet, ctx.base_macs_per_call * len(timesteps), {
                "model_path": None, "steps_per_expert": list(alloc.schedule.steps_per_interval),
                "intervals": alloc.intervals.spans()}

        return Candidate(self.name, budget, inputs_key(config_key, file_hash(path)), len(timesteps), build,
                         allocation_path=str(rel), allocation_cost=normalize_cost(alloc.info),
                         timesteps=tuple(int(t) for t in timesteps))
