"""Any-time curves: per budget, the best proxy quality found so far against the evaluations and
the seconds spent, for the router and for each search, read only from what a run stored.

Sources (nothing is re-run):

- **searches**: the ``kind: search_trial`` lines of ``results.jsonl`` at the search fidelity
  (promotions to the expensive fidelity are left out), in the order they were committed; the
  first line of each architecture key counts (as the search's ledger does). A study belongs to
  the method whose allocation names it (``allocations/<method>-<b>.json`` ``info["study"]``),
  else by its name: ``steps-b<b>`` is ``steps``, ``<prefix>-seeded-b<b>`` is ``search_seeded``,
  any other ``search`` (a second study taken for the same method and budget, e.g. of another
  prefix, keeps its own name). One evaluation per line; seconds are the wall time since the study's
  first evaluation started (``time`` of the line minus the first line's ``time - eval_s``).
  A trial counts toward the best only when complete and within the budget.
- **router**: a joint allocation's ``info["candidates"]`` (every candidate it scored, in the
  order tried, with its proxy ``value``). The agent's training is counted once, shared by all
  budgets: each budget's curve starts at ``(train_evaluations, train_seconds)`` (the relaxed
  evaluations and seconds of training, before any candidate has a value), then each candidate
  adds one evaluation (a candidate another budget already scored counts again: each budget is
  costed as if routed alone) and an equal share of the budget's decode and proxy seconds.

A router allocation without candidates (a widths-only run, an older run) has no curve: when no
budget has both a router curve and a search curve, :func:`anytime_summary` says why and the
report leaves the section out with that note.

Example:
    >>> recs = [{"kind": "search_trial", "study": "search-b0.5", "budget_ratio": 0.5, "key": k,
    ...          "fidelity": "proxy", "source": "sampler", "state": "complete", "quality": q,
    ...          "macs_ratio": 0.4, "time": 10.0 + i, "eval_s": 1.0}
    ...         for i, (k, q) in enumerate([("a", 3.0), ("b", 2.0), ("c", 2.5)])]
    >>> router = {"method": "router", "budget_ratio": 0.5, "info": {
    ...     "train_evaluations": 1, "train_seconds": 1.0, "decode_seconds": 0.0, "proxy_seconds": 1.0,
    ...     "candidates": [{"value": 2.2, "macs_ratio": 0.45}]}}
    >>> out = anytime_summary(recs, {"router-0.5": router})
    >>> out["budgets"]["0.5"]["curves"]["search"]["points"]
    [[1, 1.0, 3.0], [2, 2.0, 2.0], [3, 3.0, 2.0]]
    >>> out["budgets"]["0.5"]["curves"]["router"]["points"]
    [[2, 2.0, 2.2]]
    >>> out["budgets"]["0.5"]["verdict"]
    "router: 10.0% worse than the search's best (2.2 vs 2), at 67% of its evaluations and 67% of its seconds; the search reached it after 2 evaluations"
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from nas.methods import budget_key

__all__ = ["ANYTIME_SEARCH_METHODS", "anytime_summary", "best_at", "router_curve", "search_curves", "verdict_text"]

#: Search methods an any-time curve is drawn for, in the order the report shows them.
ANYTIME_SEARCH_METHODS = ("search", "search_seeded", "steps")

_EPS = 1e-9
_STUDY_BUDGET = re.compile(r"-b([0-9.eE+-]+)$")


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _study_methods(allocations: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{study name: method}`` as the allocations name them."""
    out: dict[str, str] = {}
    for a in allocations.values():
        study = (a.get("info") or {}).get("study")
        if isinstance(study, str) and study and isinstance(a.get("method"), str):
            out[str(study)] = str(a["method"])
    return out


def _method_of(study: str, known: Mapping[str, str]) -> str:
    if study in known:
        return known[study]
    if study.startswith("steps-"):
        return "steps"
    if "-seeded-" in study:
        return "search_seeded"
    return "search"


def _curve(method: str, budget: float, steps: Sequence[tuple[float, float, float | None]],
           offset: tuple[float, float] = (0, 0.0)) -> dict[str, Any]:
    """A JSON-ready curve: ``points`` are ``[evaluations, seconds, best so far]`` after each
    step (``best`` ``None`` until a value within the budget is found), cumulative from ``offset``."""
    evals, secs = offset
    best: float | None = None
    points = []
    for d_eval, d_s, value in steps:
        evals += d_eval
        secs += d_s
        if value is not None and (best is None or value < best):
            best = value
        points.append([int(evals), round(float(secs), 6), best])
    return {"method": method, "budget_ratio": float(budget), "offset_evaluations": int(offset[0]),
            "offset_seconds": round(float(offset[1]), 6), "evaluations": int(evals), "seconds": round(float(secs), 6),
            "best": best, "points": points}


def search_curves(records: Sequence[Mapping[str, Any]],
                  allocations: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{budget key: {method: curve}}`` of every search study in ``records`` (see the module
    docstring); a multi-objective study (no ``budget_ratio`` on its lines) gives one curve per
    budget of the allocations that name it.

    Example:
        >>> recs = [{"kind": "search_trial", "study": "steps-b0.3", "budget_ratio": 0.3, "key": "a",
        ...          "fidelity": "proxy", "state": "complete", "quality": 1.0, "macs_ratio": 0.5,
        ...          "time": 5.0, "eval_s": 2.0}]
        >>> search_curves(recs)["0.3"]["steps"]["points"]   # over the budget: no best yet
        [[1, 2.0, None]]
    """
    allocations = allocations or {}
    known = _study_methods(allocations)
    mo_budgets: dict[str, list[float]] = {}
    for a in allocations.values():
        study = (a.get("info") or {}).get("study")
        if study and (a.get("info") or {}).get("mode") == "multi_objective" and _num(a.get("budget_ratio")):
            mo_budgets.setdefault(str(study), []).append(float(a["budget_ratio"]))
    by_study: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if r.get("kind") != "search_trial" or r.get("source") == "promotion":
            continue
        by_study.setdefault(str(r.get("study")), []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for study, recs in by_study.items():
        # the search fidelity: that of the study's first line (promotions are left out above)
        fidelity = recs[0].get("fidelity")
        seen: set[Any] = set()
        firsts = []
        for r in recs:
            if r.get("fidelity") != fidelity or r.get("key") in seen:
                continue
            seen.add(r.get("key"))
            firsts.append(r)
        budget = _num(firsts[0].get("budget_ratio"))
        if budget is not None:
            budgets = [budget]
        elif study in mo_budgets:
            budgets = sorted(mo_budgets[study])
        else:
            m = _STUDY_BUDGET.search(study)
            budgets = [float(m.group(1))] if m and _num(m.group(1)) else []
        t_prev = (_num(firsts[0].get("time")) or 0.0) - (_num(firsts[0].get("eval_s")) or 0.0)
        for b in budgets:
            steps = []
            t = t_prev
            for r in firsts:
                now = _num(r.get("time"))
                dt = max(0.0, now - t) if now is not None else (_num(r.get("eval_s")) or 0.0)
                t = now if now is not None else t + dt
                q, ratio = _num(r.get("quality")), _num(r.get("macs_ratio"))
                ok = r.get("state") == "complete" and q is not None and ratio is not None and ratio <= b + _EPS
                steps.append((1, dt, q if ok else None))
            method = _method_of(study, known)
            here = out.setdefault(budget_key(b), {})
            if method in here:  # two studies of one method (another prefix): the one an allocation names wins
                if here[method]["study"] in known or study not in known:
                    method = study
                else:
                    here[here[method]["study"]] = {**here[method], "method": here[method]["study"]}
            curve = _curve(method, b, steps)
            curve["study"] = study
            here[method] = curve
    return out


def router_curve(allocation: Mapping[str, Any]) -> dict[str, Any] | None:
    """The router's curve of one allocation (``None`` without ``info["candidates"]``); see the
    module docstring for how its cost is counted."""
    info = allocation.get("info") or {}
    cands = info.get("candidates")
    b = _num(allocation.get("budget_ratio"))
    if not isinstance(cands, list) or b is None:
        return None
    cands = [c for c in cands if isinstance(c, Mapping)]
    if not cands:
        return None
    share = ((_num(info.get("decode_seconds")) or 0.0) + (_num(info.get("proxy_seconds")) or 0.0)) / len(cands)
    steps = []
    for c in cands:
        v, ratio = _num(c.get("value")), _num(c.get("macs_ratio"))
        steps.append((1, share, v if ratio is not None and ratio <= b + _EPS else None))
    offset = (int(_num(info.get("train_evaluations")) or 0), _num(info.get("train_seconds")) or 0.0)
    return _curve(str(allocation.get("method") or "router"), b, steps, offset)


def best_at(curve: Mapping[str, Any], evaluations: float) -> float | None:
    """The curve's best within ``evaluations`` (``None`` if none yet).

    Example:
        >>> c = {"points": [[1, 1.0, None], [2, 2.0, 5.0], [3, 3.0, 4.0]]}
        >>> best_at(c, 2), best_at(c, 10), best_at(c, 0)
        (5.0, 4.0, None)
    """
    best = None
    for e, _, v in curve["points"]:
        if e > evaluations + _EPS:
            break
        best = v
    return best


def _first_reaching(curve: Mapping[str, Any], value: float) -> int | None:
    for e, _, v in curve["points"]:
        if v is not None and v <= value + _EPS * max(1.0, abs(value)):
            return int(e)
    return None


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _share(a: float, b: float) -> str:
    """``a`` as a share of ``b``: ``6% of its`` below 1, ``1.5x its`` above."""
    if not b:
        return "- of its"
    x = a / b
    return f"{100 * x:.0f}% of its" if x < 1 else f"{x:.2g}x its"


def verdict_text(router: Mapping[str, Any], search: Mapping[str, Any], label: str = "the search") -> str:
    """One line comparing the router's curve with a search's (lower proxy is better).

    Example:
        >>> r = {"best": 1.004, "evaluations": 6, "seconds": 3.0, "points": [[6, 3.0, 1.004]]}
        >>> s = {"best": 1.0, "evaluations": 100, "seconds": 60.0, "points": [[100, 60.0, 1.0]]}
        >>> verdict_text(r, s)
        "router: within 0.4% of the search's best (1.004 vs 1), at 6% of its evaluations and 5% of its seconds; the search reached it after 100 evaluations"
    """
    rb, sb = router.get("best"), search.get("best")
    if rb is None:
        return "router: no candidate within the budget"
    if sb is None:
        return f"router: {_fmt(rb)}; {label} found nothing within the budget in {search['evaluations']} evaluations"

    rel = (rb - sb) / abs(sb) if sb else (rb - sb)
    if rel < 0:
        head = f"{100 * -rel:.1f}% better than {label}'s best"
    elif rel == 0:
        head = f"equal to {label}'s best"
    elif rel <= 0.01:
        head = f"within {100 * rel:.1f}% of {label}'s best"
    else:
        head = f"{100 * rel:.1f}% worse than {label}'s best"
    cost = f"at {_share(router['evaluations'], search['evaluations'])} evaluations and " \
           f"{_share(router['seconds'], search['seconds'])} seconds"
    reach = _first_reaching(search, rb)
    tail = (f"{label} reached it after {reach} evaluations" if reach is not None
            else f"{label} never reached it in {search['evaluations']} evaluations")
    return f"router: {head} ({_fmt(rb)} vs {_fmt(sb)}), {cost}; {tail}"


def anytime_summary(records: Sequence[Mapping[str, Any]],
                    allocations: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per budget the router's and each search's any-time curve and one verdict line.

    Returns ``{"available": bool, "note": str, "budgets": {budget key: {"curves": {method:
    curve}, "verdict": str, "compared_with": method}}}``; ``available`` is false (and
    ``budgets`` empty) when no budget has both a router curve and a search curve, and ``note``
    says what is missing.
    """
    searches = search_curves(records, allocations)
    routers: dict[str, dict[str, Any]] = {}
    for a in allocations.values():
        if a.get("method") == "router":
            c = router_curve(a)
            if c is not None:
                routers[budget_key(c["budget_ratio"])] = c
    budgets: dict[str, Any] = {}
    for b in sorted(set(routers) & set(searches), key=float):
        curves = {"router": routers[b]}
        order = list(ANYTIME_SEARCH_METHODS) + sorted(m for m in searches[b] if m not in ANYTIME_SEARCH_METHODS)
        curves.update({m: searches[b][m] for m in order if m in searches[b]})
        rival = next(m for m in order if m in searches[b])
        label = "the search" if rival == "search" else f"the {rival} search"
        budgets[b] = {"curves": curves, "compared_with": rival, "verdict": verdict_text(routers[b], searches[b][rival],
                                                                                        label)}
    if budgets:
        note = ("best proxy so far (lower is better) vs evaluations and wall seconds; the router's agent training "
                "is counted once at the start of every budget's curve, then each scored candidate is one evaluation")
    elif not routers and not searches:
        note = "no router candidates and no search trials stored (a widths-only or older run)"
    elif not routers:
        note = ("the router's allocations store no scored candidates (a widths-only or older run): no router "
                "curve to compare with the search")
    elif not searches:
        note = "no search trials in results.jsonl: no search curve to compare with the router"
    else:
        note = "the router and the search share no budget"
    return {"available": bool(budgets), "note": note, "budgets": budgets}
