"""Helpers that make a space's rules safe to use: errors, arch checks in ``macs``, nearest archs.

- :func:`rule_error`: any exception a rule raises (an ``assert``, a ``KeyError``...) as the
  ``ValueError`` every rule is documented to raise, naming the rule;
- :func:`checked_macs`: wraps a space's ``macs`` so that a misspelt key or a value that is not
  a choice is a ``ValueError`` naming it, instead of a silently wrong number;
- :func:`indices_by_distance`: index tuples in order of distance to a point of the encoding
  grid (what :meth:`~search_spaces.SearchSpace.decode` walks to find the nearest valid arch).
"""

from __future__ import annotations

import functools
import heapq
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["checked_macs", "checks_own_arch", "indices_by_distance", "rule_error"]


def rule_error(exc: BaseException, where: str) -> ValueError:
    """``exc``, raised by the rule ``where``, as a ValueError naming the rule.

    A ValueError is returned unchanged (it already is what a rule raises). Anything else
    becomes a ValueError that names ``where`` and the source line that raised (for an
    ``assert``, the condition itself); the caller raises it ``from exc``.
    """
    if isinstance(exc, ValueError):
        return exc
    frames = traceback.extract_tb(exc.__traceback__)
    line = (frames[-1].line or "").strip() if frames else ""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    at = f" at `{line}`" if line else ""
    return ValueError(f"rule broken in {where}{at} ({detail})")


def checked_macs(macs: Callable[..., int]) -> Callable[..., int]:
    """``macs`` that first checks its arch's keys and choices (``space.validate_choices``).

    Applied by :class:`~search_spaces.SearchSpace` to every subclass's ``macs``, so a user's
    space gets the check without writing it.
    """
    if not isinstance(macs, types.FunctionType) or getattr(macs, "_diffnas_checks_arch", False):
        return macs  # a staticmethod or other descriptor is left as it is

    @functools.wraps(macs)
    def checked(self: Any, arch: Any, *args: Any, **kwargs: Any) -> int:
        self.validate_choices(arch)
        return macs(self, arch, *args, **kwargs)

    checked._diffnas_checks_arch = True  # type: ignore[attr-defined]
    return checked


def checks_own_arch(macs: Callable[..., int]) -> Callable[..., int]:
    """Mark a ``macs`` that checks its arch itself, so :func:`checked_macs` leaves it alone."""
    macs._diffnas_checks_arch = True  # type: ignore[attr-defined]
    return macs


def indices_by_distance(targets: Sequence[float], start: tuple[int, ...],
                        sizes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Index tuples in order of L1 distance to ``targets`` (ties: smaller tuple first).

    ``start`` is the nearest tuple (each target rounded); ``sizes[k]`` is the number of
    choices of coordinate ``k``. Best-first search over one-step moves: every tuple has a
    neighbour one step nearer its rounded target, so tuples come out in non-decreasing
    distance. The iterator is unbounded; the caller stops it.
    """
    def dist(k: int, i: int) -> float:
        return abs(targets[k] - i)

    heap = [(sum(dist(k, i) for k, i in enumerate(start)), start)]
    seen = {start}
    while heap:
        cost, idx = heapq.heappop(heap)
        yield idx
        for k, n in enumerate(sizes):
            for j in (idx[k] - 1, idx[k] + 1):
                if 0 <= j < n:
                    nb = idx[:k] + (j,) + idx[k + 1:]
                    if nb not in seen:
                        seen.add(nb)
                        heapq.heappush(heap, (cost - dist(k, idx[k]) + dist(k, j), nb))
