"""``search``: the mixture of the Optuna/Ray search's allocation (``diffnas search``)."""

from __future__ import annotations

from typing import ClassVar

from benchmarks.methods._mixture import MixtureMethod

__all__ = ["SearchMethod"]


class SearchMethod(MixtureMethod):
    """The search's allocation ``allocations/search-<b>.json``, fine-tuned: found without the
    router's answer (the full and uniform points are its only seeds)."""

    name = "search"
    label = "search (Optuna)"
    color = "#1f77b4"
    marker = "s"
    needs: ClassVar[tuple[str, ...]] = ("experts", "search")
    producer = "`diffnas search`"
    cost = "search: wall time of every session and trials evaluated"
