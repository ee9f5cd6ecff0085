"""The plan of one bench call: which (method, budget) candidates to measure, from the registered
allocation methods (:mod:`nas.methods`) named in ``bench.methods``. See :mod:`benchmarks.bench`.
"""

from __future__ import annotations

from typing import Any

from nas.errors import UserError
from nas.methods import Candidate, get_method

__all__ = ["Skip", "base_candidate", "plan"]

#: ``(method, budget, reason)`` of a candidate that cannot run.
Skip = tuple[str, float | None, str]


def base_candidate(ctx: Any, config_key: str) -> Candidate:
    """The base model's candidate (the reference every row's latency is timed against)."""
    out = get_method("base").candidate(ctx, None, config_key)
    assert isinstance(out, Candidate)
    return out


def _candidate(ctx: Any, name: str, budget: float | None, config_key: str) -> Candidate | str:
    """Method ``name``'s candidate at ``budget``, or the reason it cannot run (a UserError raised
    while planning it is a reason too)."""
    try:
        return get_method(name).candidate(ctx, budget, config_key)
    except UserError as exc:
        return str(exc)


def plan(ctx: Any, config_key: str) -> tuple[list[Candidate], list[Skip]]:
    """The candidates of ``ctx.cfg.bench``: first the methods without a budget (once), then for each
    budget of ``bench.budgets`` every budgeted method, in ``bench.methods`` order; and the
    ``(method, budget, reason)`` of those that cannot run."""
    cfg = ctx.cfg
    methods = [get_method(m) for m in cfg.bench.methods]
    cands: list[Candidate] = []
    skipped: list[Skip] = []
    todo = [(m.name, None) for m in methods if not m.budgeted]
    todo += [(m.name, float(b)) for b in cfg.bench.budgets for m in methods if m.budgeted]
    for name, budget in todo:
        c = _candidate(ctx, name, budget, config_key)
        if isinstance(c, str):
            skipped.append((name, budget, c))
        else:
            cands.append(c)
    return cands, skipped

