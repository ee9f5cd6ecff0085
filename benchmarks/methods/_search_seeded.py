"""``search_seeded``: the mixture of the search seeded with the router's allocation
(``diffnas search`` with ``search.seed_with_router=true``)."""

from __future__ import annotations

from typing import ClassVar

from benchmarks.methods._mixture import MixtureMethod

__all__ = ["SearchSeededMethod"]


class SearchSeededMethod(MixtureMethod):
    """The seeded search's allocation ``allocations/search_seeded-<b>.json``, fine-tuned.

    The same Optuna search as ``search``, but the router's allocation is evaluated first, so its
    answer is at least as good as the router's by the search's proxy. Kept apart from ``search``
    (which never sees the router's answer) so that routed and searched allocations are compared
    independently.

    Example:
        >>> SearchSeededMethod.name, SearchSeededMethod.needs
        ('search_seeded', ('experts', 'router', 'search'))
    """

    name = "search_seeded"
    label = "search seeded by the router"
    color = "#17becf"
    marker = "D"
    needs: ClassVar[tuple[str, ...]] = ("experts", "router", "search")
    producer = "`diffnas search --set search.seed_with_router=true`"
    cost = "seeded search: wall time of every session and trials evaluated (the router's cost not included)"
