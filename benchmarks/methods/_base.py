"""``base`` (the unpruned base model) and ``fewer_steps`` (it, with fewer sampling steps at the
same trajectory MACs): the baselines without pruning."""

from __future__ import annotations

from typing import Any

from benchmarks.methods._common import inputs_key
from nas.methods import AllocationMethod, Candidate

__all__ = ["BaseMethod", "FewerStepsMethod"]


def _base_model(ctx: Any, num_steps: int, method: str, budget: float | None, config_key: str) -> Candidate:
    """The base UNet sampled with ``num_steps`` steps, as ``method``'s candidate."""

    def build() -> tuple[Any, int, dict[str, Any]]:
        from nas.sampling import sampling_timesteps

        steps = sampling_timesteps(ctx.scheduler, num_steps)
        return ctx.base.unet, ctx.base_macs_per_call * len(steps), {"model_path": None}

    return Candidate(method, budget, inputs_key(config_key, method, str(num_steps)), num_steps, build)


class BaseMethod(AllocationMethod):
    """The unpruned base model with ``sampling.num_steps`` steps: the reference of every row,
    measured once (no budget)."""

    name = "base"
    label = "base model"
    color = "#000000"
    marker = "*"
    marker_size = 9.0
    budgeted = False

    def candidate(self, ctx: Any, budget: float | None, config_key: str) -> Candidate:
        """The base model (``budget`` is ignored: always None)."""
        return _base_model(ctx, ctx.cfg.sampling.num_steps, self.name, None, config_key)


class FewerStepsMethod(AllocationMethod):
    """The base model with ``floor(b x sampling.num_steps)`` sampling steps
    (:func:`benchmarks.static_pruning.fewer_steps_for_budget`)."""

    name = "fewer_steps"
    label = "base, fewer steps"
    color = "#ff7f0e"
    marker = "v"
    cost = "none"

    def candidate(self, ctx: Any, budget: float | None, config_key: str) -> Candidate:
        """The base model with the fewest-steps trajectory meeting ``budget``."""
        from benchmarks.static_pruning import fewer_steps_for_budget

        assert budget is not None, "fewer_steps is made for a budget"
        n = fewer_steps_for_budget(ctx.cfg.sampling.num_steps, budget)
        return _base_model(ctx, n, self.name, budget, config_key)
