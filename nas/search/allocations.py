"""Architectures and allocations of a search: the key of an architecture (:func:`arch_key`),
``allocations/<method>-<budget>.json`` paths, the conversions between an arch of a (product)
space and an :class:`~experts.allocation.Allocation`, and the known points a study evaluates
first (:func:`known_points`: full, widest uniform, and the router's allocation, which only a search
seeded with it evaluates: see ``search.seed_with_router``)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experts.allocation import Allocation
from experts.intervals import Intervals
from experts.mixture_space import MixtureSpace
from experts.steps_space import JointSpace
from nas.errors import UserError
from search_spaces import Arch, ProductSpace, SearchSpace
from search_spaces.uniform import uniform_arch

__all__ = [
    "KNOWN_POINT_SOURCES",
    "allocation_path",
    "allocation_to_arch",
    "arch_key",
    "arch_to_allocation",
    "budget_label",
    "known_points",
    "shrink_to_budget",
    "uniform_width_arch",
]

log = logging.getLogger(__name__)

KNOWN_POINT_SOURCES = ("full", "uniform", "router")  # the ``source`` of each of :func:`known_points`


def arch_key(arch: Mapping[str, Any]) -> str:
    """Deterministic short key of an architecture (16 hex digits of SHA-256 of its JSON).

    Example:
        >>> arch_key(Arch({"a": 1, "b": True})) == arch_key({"b": True, "a": 1})
        True
    """
    return hashlib.sha256(Arch(arch).to_json().encode("utf-8")).hexdigest()[:16]


def budget_label(budget_ratio: float) -> str:
    """How a budget is written in file and study names (``0.5``, ``0.25``, ``1``)."""
    return f"{budget_ratio:g}"


def allocation_path(allocations_dir: str | os.PathLike[str], method: str, budget_ratio: float) -> Path:
    """``allocations/<method>-<budget>.json`` (budget written with ``%g``: ``search-0.5.json``).

    Example:
        >>> allocation_path("allocations", "router", 0.50).name
        'router-0.5.json'
    """
    return Path(allocations_dir) / f"{method}-{budget_label(budget_ratio)}.json"


def uniform_width_arch(space: SearchSpace, budget_ratio: float) -> Arch | None:
    """The widest *uniform* arch within the budget (:func:`search_spaces.uniform.uniform_arch`),
    the hand-made baseline a searched allocation must beat; ``None`` when even the narrowest
    uniform arch is over the budget.

    Example:
        >>> from search_spaces import Dimension, SimpleSpace
        >>> s = SimpleSpace([Dimension("a", (8, 16, 32)), Dimension("b", (8, 16, 32))],
        ...                 macs_fn=lambda x: x["a"] + x["b"])
        >>> uniform_width_arch(s, 0.5).to_dict()
        {'a': 16, 'b': 16}
    """
    found = uniform_arch(space, budget_ratio)
    return found.arch if found is not None else None


def allocation_to_arch(space: SearchSpace, allocation: Allocation) -> Arch:
    """The arch of ``space`` that an allocation describes (experts in interval order = parts in
    the space's order; for a joint steps x experts space, its schedule too); ValueError when it
    does not fit the space."""
    if isinstance(space, JointSpace):
        return MixtureSpace.from_product(space, allocation.intervals).from_allocation(allocation)
    if isinstance(space, ProductSpace):
        parts = list(space.parts)
        if len(parts) != len(allocation.archs):
            raise ValueError(f"allocation has {len(allocation.archs)} experts, the space has {len(parts)} parts")
        arch = space.join(dict(zip(parts, allocation.archs)))
    else:
        if len(allocation.archs) != 1:
            raise ValueError(f"allocation has {len(allocation.archs)} experts, the space is not a ProductSpace")
        arch = allocation.archs[0]
    space.validate(arch)
    return arch


def arch_to_allocation(
    space: SearchSpace,
    arch: Mapping[str, Any],
    intervals: Intervals,
    budget_ratio: float,
    method: str = "search",
    info: Mapping[str, Any] | None = None,
    reference_macs: int | None = None,
) -> Allocation:
    """An :class:`~experts.allocation.Allocation` from an arch of a (product) space.

    For a :class:`ProductSpace` the parts are the experts in interval order and the part weights
    are the sampling steps each expert serves; a plain space is one expert serving one step. A
    joint steps x experts space (:class:`~experts.steps_space.JointSpace`) gives an allocation
    with its step schedule, whose ``base_trajectory_macs`` is ``reference_macs`` (required).
    """
    arch = Arch(arch)
    if isinstance(space, JointSpace):
        if not reference_macs:
            raise ValueError("an allocation of a joint space needs the reference (base) trajectory MACs")
        return MixtureSpace.from_product(space, intervals).to_allocation(
            arch, method=method, budget_ratio=budget_ratio, base_trajectory_macs=reference_macs, info=info)
    if isinstance(space, ProductSpace):
        parts = list(space.parts)
        if len(parts) != intervals.num_intervals:
            raise UserError(
                f"the search space has {len(parts)} experts but the intervals have {intervals.num_intervals}"
            )
        split = space.split(arch)
        archs = tuple(split[p] for p in parts)
        macs = tuple(space.parts[p].macs(split[p]) for p in parts)
        steps = tuple(int(round(space.weights[p])) for p in parts)
        for p in parts:
            if abs(space.weights[p] - round(space.weights[p])) > 1e-9:
                raise UserError(f"part {p!r} weight {space.weights[p]} is not a whole number of sampling steps")
        base = sum(space.parts[p].macs(space.parts[p].full()) * s for p, s in zip(parts, steps))
    else:
        if intervals.num_intervals != 1:
            raise UserError(f"a single-expert space needs one interval, got {intervals.num_intervals}")
        archs, macs, steps = (arch,), (space.macs(arch),), (1,)
        base = space.macs(space.full())
    return Allocation(
        method=method,
        budget_ratio=float(budget_ratio),
        intervals=intervals,
        archs=archs,
        macs_per_expert=macs,
        steps_per_expert=steps,
        base_trajectory_macs=int(base),
        info=dict(info or {}),
    )


def known_points(
    space: SearchSpace, budget_ratio: float | None, allocations_dir: str | os.PathLike[str] | None = None
) -> list[tuple[str, Arch]]:
    """Points worth evaluating first: ``full``, ``uniform`` (widest uniform arch within the
    budget) and ``router`` (``allocations/router-<budget>.json``, when it exists and fits).

    Example:
        >>> from search_spaces import Dimension, SimpleSpace
        >>> s = SimpleSpace([Dimension("a", (1, 2))], macs_fn=lambda x: x["a"])
        >>> [name for name, _ in known_points(s, 0.5)]
        ['full', 'uniform']
    """
    out: list[tuple[str, Arch]] = [("full", space.full())]
    if budget_ratio is not None:
        uni = uniform_width_arch(space, budget_ratio)
        if uni is not None and uni != space.full():
            out.append(("uniform", uni))
        if allocations_dir is not None:
            path = allocation_path(allocations_dir, "router", budget_ratio)
            if path.exists():
                try:
                    out.append(("router", allocation_to_arch(space, Allocation.load(path))))
                except (ValueError, KeyError, OSError) as err:
                    log.warning("router allocation %s does not fit the search space (%s); not enqueued", path, err)
    return out


def shrink_to_budget(space: SearchSpace, arch: Mapping[str, Any], max_macs: float,
                     rng: np.random.Generator) -> Arch | None:
    """``arch`` shrunk until its MACs are at most ``max_macs``: one free dimension at a time
    steps one choice down (a kept layer is removed), drawn with probability proportional to the
    MACs that step saves times the dimension's current choice index. So a step count (a whole
    network call per step) goes down long before a sliver of width, a dimension that saves
    nothing (a timestep spacing) is never changed, and every dimension shrinks at a rate
    proportional to its size: the result keeps the proposal's proportions (which intervals got
    more steps, which experts and blocks were large; an interval's steps seldom drop to 0)
    while meeting the budget. ``None`` when even stepping everything down does not fit. Bounded
    by the number of possible steps.

    Example:
        >>> import numpy as np
        >>> from search_spaces import Dimension, SimpleSpace
        >>> s = SimpleSpace([Dimension("a", (8, 16, 32)), Dimension("b", (8, 16, 32))],
        ...                 macs_fn=lambda x: x["a"] + x["b"])
        >>> small = shrink_to_budget(s, s.full(), 40, np.random.default_rng(0))
        >>> s.macs(small) <= 40
        True
    """
    free = {d.name: d for d in space.free_dimensions() if len(d.choices) > 1}
    idx = {n: d.index(arch[n]) for n, d in free.items()}
    # a product space's MACs add up over its parts: a step in one part changes only the savings
    # of that part's dimensions, so only those are recounted (all of them for any other space)
    sep = getattr(space, "SEP", None) if isinstance(space, ProductSpace) else None
    group = {n: (n.split(sep, 1)[0] if sep else "") for n in free}

    def build(at: Mapping[str, int]) -> tuple[Arch, float | None]:
        cand = space.repair(space.complete({n: free[n].choices[i] for n, i in at.items()}))
        return cand, (float(space.macs(cand)) if space.is_valid(cand) else None)

    def raw_macs(at: Mapping[str, int]) -> float:
        # the savings only weight the draw: MACs of the unrepaired arch, far cheaper than build
        return float(space.macs(space.complete({n: free[n].choices[i] for n, i in at.items()})))

    saved: dict[str, float] = {}  # name -> MACs its one-step-down saves now (stale ones dropped)
    for _ in range(sum(idx.values()) + 1):
        cand, macs = build(idx)
        if macs is not None and macs <= max_macs:
            return cand
        movable = sorted(n for n, i in idx.items() if i > 0)
        if not movable:
            return None
        if any(n not in saved for n in movable):
            here = raw_macs(idx)
            for n in movable:
                if n not in saved:
                    saved[n] = max(here - raw_macs({**idx, n: idx[n] - 1}), 0.0)
        w = np.array([saved[n] * idx[n] for n in movable])  # (M,) MACs saved x size: a proportional shrink
        # nothing saves MACs (only zero-cost dimensions left): step any down, so the loop ends
        p = w / w.sum() if w.sum() > 0 else np.full(len(movable), 1.0 / len(movable))
        stepped = movable[int(rng.choice(len(movable), p=p))]
        idx[stepped] -= 1
        saved = {n: v for n, v in saved.items() if group[n] != group[stepped]}
    return None
