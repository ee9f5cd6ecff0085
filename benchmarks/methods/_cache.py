"""``cache``: the base model sampled with DeepCache (:mod:`experts.caching`), training-free."""

from __future__ import annotations

import weakref
from typing import Any

from benchmarks.methods._common import inputs_key
from nas.methods import AllocationMethod, Candidate

__all__ = ["CacheMethod"]


class CacheMethod(AllocationMethod):
    """The base UNet with ``sampling.num_steps`` steps, DeepCache's deep features reused across
    steps: for each budget, the (cache interval, branch) whose trajectory MACs ratio is the
    largest at or under it (:func:`experts.caching.choose_cache`); a budget under the cheapest
    option (the longest interval with the shallowest branch) is skipped with the reason."""

    name = "cache"
    label = "DeepCache (caching)"
    color = "#8c564b"
    marker = "X"
    cost = "none (a rule)"

    def __init__(self) -> None:
        # per base UNet: one full and one cached call's MACs per branch (a few traced calls)
        self._branch_macs: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()

    def branch_macs(self, unet: Any) -> list[Any]:
        """:func:`experts.caching.branch_macs` of ``unet`` (one sample per call), counted once."""
        from experts.caching import branch_macs

        if unet not in self._branch_macs:
            self._branch_macs[unet] = branch_macs(unet, batch_size=1)
        return self._branch_macs[unet]

    def candidate(self, ctx: Any, budget: float | None, config_key: str) -> Candidate | str:
        """The cached base model meeting ``budget``, or why none does."""
        from experts.caching import CachedUNet, cache_options, choose_cache, full_steps

        assert budget is not None, "cache is made for a budget"
        n = ctx.cfg.sampling.num_steps
        per_branch = self.branch_macs(ctx.base.unet)
        choice = choose_cache(per_branch, n, budget)
        if choice is None:
            cheapest = min(o.ratio for o in cache_options(per_branch, n))
            return (f"no DeepCache interval/branch meets budget {budget:g} at {n} steps "
                    f"(the cheapest runs at {cheapest:.3f} of the base MACs)")
        s = choice.settings

        def build() -> tuple[Any, int, dict[str, Any]]:
            info = {"interval": s.interval, "branch": s.branch, "macs_full_call": choice.macs.full,
                    "macs_cached_call": choice.macs.cached, "full_steps": full_steps(n, s.interval)}
            return CachedUNet(ctx.base.unet, s), choice.trajectory_macs, {"model_path": None, "cache": info}

        key = inputs_key(config_key, self.name, str(n), str(s.interval), str(s.branch))
        return Candidate(self.name, budget, key, n, build)

