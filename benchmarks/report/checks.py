"""What the report reads, checked before anything is written: every failure is one
:class:`~search_spaces.errors.UserError` line naming the file, what is wrong, and the remedy.

Checked: the fields of the ``results.jsonl`` records the report uses (types; a line that is not
JSON is what a crashed append leaves and is skipped with a warning, as ``RunDir.read_results``
does), ``intervals.json`` (valid JSON; contiguous, non-overlapping intervals covering
``[0, num_train_timesteps)``; a similarity matrix matching its grid) and ``allocations/*.json``
(valid JSON objects with numeric MACs and integer steps).

Example:
    >>> check_intervals({"num_train_timesteps": 1000, "boundaries": [400],
    ...                  "spans": [[0, 400], [400, 1000]]}, "intervals.json")
    >>> check_intervals({"num_train_timesteps": 1000, "boundaries": [400],
    ...                  "spans": [[0, 500], [400, 1000]]}, "intervals.json")
    Traceback (most recent call last):
    ...
    search_spaces.errors.UserError: intervals.json: intervals [0, 500) and [400, 1000) overlap; rerun `diffnas intervals` (or `diffnas run`) to rewrite it
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search_spaces.errors import UserError

__all__ = ["check_allocation", "check_intervals", "check_record", "read_json_file"]

_NUMBER = "a number"
_RERUN_BENCH = "fix or remove that line, or rerun `diffnas bench` in a fresh run"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# field -> (predicate, what it should be); None is always allowed (a missing measurement)
_BENCH_FIELDS: dict[str, tuple[Any, str]] = {
    "method": (lambda v: isinstance(v, str) and bool(v), "a method name"),
    "budget_ratio": (_is_number, _NUMBER),
    "config_key": (lambda v: isinstance(v, str), "a string"),
    **{k: (_is_number, _NUMBER) for k in (
        "fid_mean", "fid_ci_low", "fid_ci_high", "kid_mean", "kid_ci_low", "kid_ci_high", "macs_per_trajectory",
        "macs_ratio", "latency_ms_per_image", "base_latency_ms_per_image", "speedup", "confidence")},
    **{k: (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a list of numbers")
       for k in ("fid_values", "kid_values", "macs_per_expert")},
    **{k: (lambda v: isinstance(v, list) and all(_is_int(x) for x in v), "a list of integers")
       for k in ("steps_per_expert", "timesteps", "seeds")},
    **{k: (_is_int, "an integer") for k in ("num_steps", "num_generated", "num_reference", "num_seeds")},
    **{k: (lambda v: isinstance(v, dict), "an object") for k in ("finetune", "allocation_cost", "machine", "versions")},
    "latency_by_batch": (lambda v: isinstance(v, dict) and all(
        str(k).isdigit() and isinstance(e, dict) and _is_number(e.get("ms_per_image")) for k, e in v.items()),
        'an object {"<batch size>": {"ms_per_image": number, ...}}'),
    **{k: (lambda v: isinstance(v, str) and not Path(v).is_absolute(), "a path relative to the run folder")
       for k in ("grid", "model_path")},
}
_SKIP_FIELDS = {"method": _BENCH_FIELDS["method"], "budget_ratio": _BENCH_FIELDS["budget_ratio"],
                "reason": (lambda v: isinstance(v, str), "a string")}
_TRIAL_FIELDS = {k: (_is_number, _NUMBER) for k in ("quality", "macs_ratio", "budget_ratio")}


def check_record(record: Any, path: Path, lineno: int) -> None:
    """Raise a one-line :class:`UserError` when line ``lineno`` of ``path`` (a ``results.jsonl``)
    is not a JSON object, or a field the report reads has the wrong type.

    Example:
        >>> check_record({"kind": "bench", "method": "router", "fid_mean": 3.5}, Path("r.jsonl"), 1)
        >>> check_record({"kind": "bench", "method": "router", "fid_mean": "3.5"}, Path("r.jsonl"), 7)
        Traceback (most recent call last):
        ...
        search_spaces.errors.UserError: r.jsonl line 7: 'fid_mean' is "3.5", expected a number; fix or remove that line, or rerun `diffnas bench` in a fresh run
    """
    if not isinstance(record, dict):
        raise UserError(f"{path} line {lineno} is not a JSON object; {_RERUN_BENCH}")
    kind = record.get("kind")
    fields = {"bench": _BENCH_FIELDS, "bench_skip": _SKIP_FIELDS, "search_trial": _TRIAL_FIELDS}.get(str(kind), {})
    for key, (ok, what) in fields.items():
        v = record.get(key)
        if v is not None and not ok(v):
            shown = json.dumps(v)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise UserError(f"{path} line {lineno}: {key!r} is {shown}, expected {what}; {_RERUN_BENCH}")
    if kind == "bench" and record.get("method") is None:
        raise UserError(f"{path} line {lineno}: a bench row without 'method'; {_RERUN_BENCH}")


def read_json_file(path: Path, remedy: str) -> Any:
    """``json.loads`` of ``path``, or a one-line :class:`UserError` naming it (unreadable, not
    UTF-8, truncated or otherwise not JSON) with ``remedy``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = f"is not valid JSON ({exc})" if isinstance(exc, json.JSONDecodeError) else f"cannot be read ({exc})"
        raise UserError(f"{path} {why}; {remedy}") from None


_RERUN_INTERVALS = "rerun `diffnas intervals` (or `diffnas run`) to rewrite it"


def check_intervals(data: Any, name: str | Path) -> None:
    """Raise a one-line :class:`UserError` unless ``data`` (``intervals.json``) describes
    contiguous, non-overlapping intervals covering ``[0, num_train_timesteps)``, with a
    similarity matrix (when stored) as large as its grid."""
    if not isinstance(data, dict):
        raise UserError(f"{name}: expected a JSON object; {_RERUN_INTERVALS}")
    T = data.get("num_train_timesteps")
    if not _is_int(T) or T < 1:
        raise UserError(f"{name}: 'num_train_timesteps' is {T!r}, expected a positive integer; {_RERUN_INTERVALS}")
    b = data.get("boundaries", [])
    if not isinstance(b, list) or not all(_is_int(x) or _is_number(x) for x in b):
        raise UserError(f"{name}: 'boundaries' is {b!r}, expected a list of timesteps; {_RERUN_INTERVALS}")
    edges = [0, *b, T]
    spans = data.get("spans")
    if spans is None:
        spans = [list(s) for s in zip(edges[:-1], edges[1:])]
    if not isinstance(spans, list) or not all(isinstance(s, list) and len(s) == 2 and all(_is_number(x) for x in s)
                                              for s in spans):
        raise UserError(f"{name}: 'spans' is not a list of [start, end) pairs; {_RERUN_INTERVALS}")
    ordered = sorted(spans)
    for (a0, a1), (b0, b1) in zip(ordered, ordered[1:]):
        if b0 < a1:
            raise UserError(f"{name}: intervals [{a0}, {a1}) and [{b0}, {b1}) overlap; {_RERUN_INTERVALS}")
        if b0 > a1:
            raise UserError(f"{name}: timesteps [{a1}, {b0}) belong to no interval; {_RERUN_INTERVALS}")
    for s0, s1 in ordered:
        if not s0 < s1:
            raise UserError(f"{name}: interval [{s0}, {s1}) is empty; {_RERUN_INTERVALS}")
    if ordered and (ordered[0][0] != 0 or ordered[-1][1] != T):
        raise UserError(f"{name}: the intervals cover [{ordered[0][0]}, {ordered[-1][1]}), not [0, {T}); "
                        f"{_RERUN_INTERVALS}")
    if [list(s) for s in zip(edges[:-1], edges[1:])] != [list(s) for s in ordered]:
        raise UserError(f"{name}: 'spans' {spans} do not match 'boundaries' {b}; {_RERUN_INTERVALS}")
    sim, grid = data.get("similarity"), data.get("timesteps")
    if sim is not None or grid is not None:
        n = len(grid) if isinstance(grid, list) else -1
        if not (isinstance(sim, list) and n > 0 and len(sim) == n
                and all(isinstance(r, list) and len(r) == n and all(_is_number(x) for x in r) for r in sim)):
            raise UserError(f"{name}: 'similarity' is not a {max(n, 0)} x {max(n, 0)} matrix of numbers matching "
                            f"'timesteps'; {_RERUN_INTERVALS}")


def check_allocation(data: Any, path: Path) -> None:
    """Raise a one-line :class:`UserError` unless ``data`` (an ``allocations/*.json``) is an
    object whose ``macs_per_expert`` are numbers and ``steps_per_expert`` integers."""
    remedy = "rerun the stage that wrote it (`diffnas route` / `diffnas search`), or move the file out of allocations/"
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: expected a JSON object; {remedy}")
    for key, ok, what in (("macs_per_expert", _is_number, "numbers"), ("steps_per_expert", _is_int, "integers")):
        v = data.get(key, [])
        if not isinstance(v, list) or not all(ok(x) for x in v):
            raise UserError(f"{path}: {key!r} is {v!r}, expected a list of {what}; {remedy}")
    for key in ("budget_ratio", "base_trajectory_macs", "achieved_ratio"):
        v = data.get(key)
        if v is not None and not _is_number(v):
            raise UserError(f"{path}: {key!r} is {v!r}, expected a number; {remedy}")
    if data.get("info") is not None and not isinstance(data["info"], Mapping):
        raise UserError(f"{path}: 'info' is {data['info']!r}, expected an object; {remedy}")
