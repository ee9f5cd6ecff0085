"""``router``: the mixture of the Expert Routing Agent's allocation (``diffnas route``)."""

from __future__ import annotations

from typing import ClassVar

from benchmarks.methods._mixture import MixtureMethod

__all__ = ["RouterMethod"]


class RouterMethod(MixtureMethod):
    """The routing agent's allocation ``allocations/router-<b>.json``, fine-tuned."""

    name = "router"
    label = "router (learned)"
    color = "#d62728"
    marker = "o"
    marker_size = 11.0
    highlight = True  # the search may keep the router's allocation: both points must stay visible
    needs: ClassVar[tuple[str, ...]] = ("experts", "router")
    producer = "`diffnas route`"
    cost = "agent training: wall time and relaxed evaluations"
