"""The report's numbers, read only from what a run stored: Pareto fronts, hypervolume, the rows
reported per (method, budget), and the ``summary.json`` content (schema in :mod:`benchmarks.report`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.methods import all_methods, budget_key

log = logging.getLogger(__name__)

__all__ = [
    "RunData",
    "SCHEMA",
    "build_summary",
    "fmt_ci",
    "fmt_macs",
    "fmt_num",
    "hypervolume_2d",
    "load_run",
    "method_label",
    "method_order",
    "pareto_indices",
    "reference_point",
    "search_summary",
]

SCHEMA = "diffnas-report/1"
REF_MACS_RATIO = 1.05
REF_FID_FACTOR = 1.1


# --------------------------------------------------------------------------------------------
# methods: labels and order from the registry (a method no plugin registers shows its name, last)


def method_label(name: str) -> str:
    """The report's label of method ``name`` (its registered ``label``, else the name itself).

    Example:
        >>> method_label("router"), method_label("not_registered")
        ('router (learned)', 'not_registered')
    """
    method = all_methods().get(name)
    return method.label if method is not None else name


def method_order() -> dict[str, int]:
    """``{name: position}`` of the registered methods: the order of the report's rows and plots.

    Example:
        >>> list(method_order())[:2]
        ['router', 'search']
    """
    return {name: i for i, name in enumerate(all_methods())}


# --------------------------------------------------------------------------------------------
# numbers


def pareto_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (both coordinates minimised), sorted by the first.

    Example:
        >>> pareto_indices([(1.0, 1.0), (1.0, 2.0), (0.5, 3.0)])
        [2, 0]
    """
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i
        )
        duplicate_earlier = any((x2, y2) == (x, y) for x2, y2 in points[:i])
        if not dominated and not duplicate_earlier:
            idx.append(i)
    return sorted(idx, key=lambda i: (points[i][0], points[i][1]))


def hypervolume_2d(points: Iterable[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both coordinates minimised) and bounded by ``ref``.

    Points not strictly better than ``ref`` in both coordinates add nothing.

    Example:
        >>> hypervolume_2d([(0.5, 0.5)], (1.0, 1.0))
        0.25
        >>> hypervolume_2d([(2.0, 0.5)], (1.0, 1.0))
        0.0
    """
    rx, ry = float(ref[0]), float(ref[1])
    pts = [(float(x), float(y)) for x, y in points if x < rx and y < ry]
    if not pts:
        return 0.0
    front = [pts[i] for i in pareto_indices(pts)]  # x increasing, y decreasing
    area = 0.0
    for i, (x, y) in enumerate(front):
        x_next = front[i + 1][0] if i + 1 < len(front) else rx
        area += (x_next - x) * (ry - y)
    return float(area)


def reference_point(fids: Iterable[float]) -> tuple[float, float]:
    """The hypervolume reference point of a report: ``(1.05, 1.1 x max FID)``.

    Example:
        >>> reference_point([10.0, 20.0])
        (1.05, 22.0)
    """
    values = [float(f) for f in fids if f is not None and math.isfinite(float(f))]
    top = max(values) if values else 1.0
    return (REF_MACS_RATIO, round(REF_FID_FACTOR * top, 12))


def fmt_num(value: Any, digits: int = 2) -> str:
    """A number as shown in the report (``-`` for missing).

    Example:
        >>> fmt_num(12.3456), fmt_num(None), fmt_num(0.000123, 4)
        ('12.35', '-', '0.0001')
    """
    if value is None:
        return "-"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "-"
    return f"{v:.{digits}f}"


def fmt_ci(mean: Any, low: Any, high: Any, digits: int = 2) -> str:
    """``mean [low, high]`` as shown in the tables.

    Example:
        >>> fmt_ci(10.0, 9.5, 10.5)
        '10.00 [9.50, 10.50]'
        >>> fmt_ci(10.0, None, None)
        '10.00'
    """
    if low is None or high is None:
        return fmt_num(mean, digits)
    return f"{fmt_num(mean, digits)} [{fmt_num(low, digits)}, {fmt_num(high, digits)}]"


def fmt_macs(macs: Any) -> str:
    """MACs with a unit as the tables show them (``1.50G``; ``-`` for missing).

    Example:
        >>> fmt_macs(1_500_000_000), fmt_macs(None)
        ('1.50G', '-')
    """
    if macs is None:
        return "-"
    m = float(macs)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if m >= scale:
            return f"{m / scale:.2f}{unit}"
    return f"{m:.0f}"


# --------------------------------------------------------------------------------------------
# reading a run


@dataclass(frozen=True)
class RunData:
    """What a run stored, read once (no model is loaded)."""

    path: Path
    records: tuple[dict[str, Any], ...]
    allocations: dict[str, dict[str, Any]]
    intervals: dict[str, Any] | None
    config_text: str | None
    similarity_png: Path | None
    #: ``(matrix, grid timesteps)`` stored in ``intervals.json``, or None
    similarity: tuple[list[list[float]], list[int]] | None = None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of ``results.jsonl``, each checked (:func:`~benchmarks.report.checks.check_record`).

    A line that is not JSON is what a crashed append leaves (``RunDir.append_result`` starts the
    next record on a fresh line): skipped with a warning, as ``RunDir.read_results`` does.
    """
    from benchmarks.report.checks import check_record
    from search_spaces.errors import UserError

    out = []
    if not path.is_file():
        return out
    try:
        text_all = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); restore it from a copy or rerun `diffnas bench`") from None
    for lineno, line in enumerate(text_all.splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError:
            log.warning("%s line %d is not valid JSON (a crashed write?); skipped", path, lineno)
            continue
        check_record(rec, path, lineno)
        out.append(rec)
    return out


def load_run(run_dir: str | Path) -> RunData:
    """Read and check the stored results of ``run_dir`` (``results.jsonl``, allocations,
    intervals, ...); a damaged input is a one-line :class:`~search_spaces.errors.UserError`
    naming the file (:mod:`benchmarks.report.checks`)."""
    from benchmarks.report.checks import check_allocation, check_intervals, read_json_file
    from search_spaces.errors import UserError

    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run directory {str(run_dir)!r} does not exist")
    results = path / "results.jsonl"
    if not results.is_file():
        raise UserError(f"{results} does not exist; run `diffnas bench` (or `diffnas run`) first")
    records = _read_jsonl(results)
    allocations: dict[str, dict[str, Any]] = {}
    adir = path / "allocations"
    if adir.is_dir():
        for f in sorted(adir.glob("*.json")):
            data = read_json_file(f, "rerun the stage that wrote it (`diffnas route` / `diffnas search`), "
                                     "or move the file out of allocations/")
            check_allocation(data, f)
            allocations[f.stem] = data
    intervals = None
    similarity = None
    ipath = path / "intervals.json"
    if ipath.is_file():
        data = read_json_file(ipath, "rerun `diffnas intervals` (or `diffnas run`) to rewrite it")
        check_intervals(data, ipath)
        intervals = {k: data[k] for k in ("num_train_timesteps", "boundaries", "spans", "num_intervals",
                                          "measure", "criterion") if k in data}
        if data.get("similarity") and data.get("timesteps"):
            similarity = (data["similarity"], data["timesteps"])
    config_text = None
    if (path / "config.yaml").is_file():
        try:
            config_text = (path / "config.yaml").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path / 'config.yaml'} cannot be read ({exc}); rerun the run's first stage") from None
    sim = path / "similarity.png"
    return RunData(path, tuple(records), allocations, intervals, config_text, sim if sim.is_file() else None,
                   similarity)


def _select_rows(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str | None, int]:
    bench = [dict(r) for r in records if r.get("kind") == "bench"]
    if not bench:
        return [], None, 0
    key = bench[-1].get("config_key")
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    ignored = 0
    for r in bench:
        if r.get("config_key") != key:
            ignored += 1
            continue
        latest[(str(r.get("method")), budget_key(r.get("budget_ratio")))] = r
    order = method_order()
    rows = sorted(latest.values(), key=lambda r: (order.get(str(r.get("method")), len(order)), str(r.get("method")),
                                                  -1.0 if r.get("budget_ratio") is None else float(r["budget_ratio"])))
    return rows, key, ignored


_ROW_KEYS = ("method", "budget_ratio", "fid_mean", "fid_ci_low", "fid_ci_high", "fid_values", "kid_mean",
             "kid_ci_low", "kid_ci_high", "kid_values", "macs_per_trajectory", "macs_ratio", "latency_ms_per_image",
             "base_latency_ms_per_image", "speedup", "latency_group", "finetune", "allocation_cost", "grid",
             "num_steps", "model_path", "seeds", "confidence")


def _schedule_keys(row: Mapping[str, Any]) -> dict[str, Any]:
    """``steps_per_interval`` of a row sampled along its own step schedule (a joint allocation);
    nothing for rows of evenly spaced steps (their summary keeps its fields)."""
    if row.get("timesteps") is None or row.get("steps_per_expert") is None:
        return {}
    return {"steps_per_interval": [int(s) for s in row["steps_per_expert"]]}


def _condition_keys(row: Mapping[str, Any]) -> dict[str, Any]:
    """A class-conditional run's ``class_accuracy`` (the digit classifier recognises the requested
    class), ``guidance_scale`` and ``macs_parts``; nothing for unconditional rows."""
    return {k: row[k] for k in ("class_accuracy", "class_accuracy_per_seed", "guidance_scale", "macs_parts")
            if row.get(k) is not None}


def _base_keys(row: Mapping[str, Any], allocations: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``base_intervals`` of a row whose allocation serves intervals by the base model itself
    (a joint space with the base as a choice); nothing otherwise."""
    if row.get("budget_ratio") is None:
        return {}
    alloc = allocations.get(f"{row.get('method')}-{budget_key(row['budget_ratio'])}") or {}
    base = alloc.get("base_intervals") or []
    return {"base_intervals": [int(k) for k in base]} if base else {}


def _yaml(text: str | None) -> Any:
    if text is None:
        return None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _allocation_summary(name: str, a: Mapping[str, Any], base_num_steps: int | None = None) -> dict[str, Any]:
    macs = [int(m) for m in a.get("macs_per_expert", [])]
    steps = [int(s) for s in a.get("steps_per_expert", [])]
    base_traj = float(a.get("base_trajectory_macs") or 0)
    total_steps = sum(steps)
    if a.get("schedule") and base_num_steps:
        total_steps = int(base_num_steps)  # a searched schedule: per call is the base's trajectory / its steps
    base_call = base_traj / total_steps if total_steps else 0.0
    info = a.get("info") or {}
    cost = info.get("search_cost") or info.get("cost") or info.get("training") or None
    traj = sum(m * s for m, s in zip(macs, steps))
    return {
        "method": a.get("method"), "budget_ratio": a.get("budget_ratio"),
        "achieved_ratio": (traj / base_traj) if base_traj else a.get("achieved_ratio"),
        "feasible": a.get("feasible"), "macs_per_expert": macs, "steps_per_expert": steps,
        "per_call_ratio": [m / base_call if base_call else None for m in macs],
        "spans": (a.get("intervals") or {}).get("spans"), "cost": cost,
    }


def search_summary(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Counts of the ``search_trial`` records (total and per study) and the trials themselves;
    ``(None, [])`` when there are none."""
    trials = [dict(r) for r in records if r.get("kind") == "search_trial"]
    if not trials:
        return None, []
    studies: dict[str, dict[str, int]] = {}
    for r in trials:
        s = studies.setdefault(str(r.get("study")), {"trials": 0, "complete": 0, "failed": 0, "feasible": 0,
                                                     "infeasible": 0})
        s["trials"] += 1
        ok = r.get("state") == "complete" and r.get("quality") is not None
        s["complete" if ok else "failed"] += 1
        if ok:
            s["feasible" if r.get("feasible") else "infeasible"] += 1
    total = {k: sum(s[k] for s in studies.values()) for k in ("trials", "complete", "failed", "feasible", "infeasible")}
    return {**total, "studies": dict(sorted(studies.items()))}, trials


def build_summary(data: RunData) -> dict[str, Any]:
    """The report's numbers (the ``summary.json`` content, see the module docstring); no files written."""
    rows, key, ignored = _select_rows(data.records)
    shown = [{**{k: r.get(k) for k in _ROW_KEYS}, **_schedule_keys(r), **_base_keys(r, data.allocations),
              **_condition_keys(r)}
             for r in rows]
    ref = reference_point(r["fid_mean"] for r in shown if r.get("fid_mean") is not None)
    methods: dict[str, Any] = {}
    for m in dict.fromkeys(r["method"] for r in shown):
        pts = [(float(r["macs_ratio"]), float(r["fid_mean"])) for r in shown
               if r["method"] == m and r.get("macs_ratio") is not None and r.get("fid_mean") is not None]
        front = [list(pts[i]) for i in pareto_indices(pts)]
        methods[m] = {"points": [list(p) for p in pts], "pareto": front, "hypervolume": hypervolume_2d(pts, ref)}
    budgets: dict[str, list[str]] = {}
    for r in shown:
        if r["budget_ratio"] is not None:
            budgets.setdefault(budget_key(r["budget_ratio"]), []).append(r["method"])
    budgets = dict(sorted(budgets.items(), key=lambda kv: float(kv[0])))
    have = {(r["method"], budget_key(r["budget_ratio"])) for r in shown}
    skipped: dict[tuple[str, str], dict[str, Any]] = {}
    for r in data.records:
        if r.get("kind") != "bench_skip" or (key is not None and r.get("config_key") not in (None, key)):
            continue
        k2 = (str(r.get("method")), budget_key(r.get("budget_ratio")))
        if k2 not in have:
            skipped[k2] = {"method": r.get("method"), "budget_ratio": r.get("budget_ratio"), "reason": r.get("reason")}
    search, _ = search_summary(data.records)
    first = rows[-1] if rows else {}
    setup_keys = ("extractor", "num_generated", "num_reference", "feature_dim", "seeds", "num_seeds", "confidence",
                  "sampler", "num_steps", "device", "latency_batch_size", "latency_repeats")
    setup = {k: first.get(k) for k in setup_keys}
    base_rows = [r for r in rows if r.get("method") == "base"]
    if base_rows:
        setup["num_steps"] = base_rows[-1].get("num_steps")
    ft = next((r.get("finetune") for r in rows if r.get("finetune")), None)
    setup["finetune"] = ft
    run_name = next((r.get("run") for r in reversed(rows) if r.get("run")), data.path.name)
    return {
        "schema": SCHEMA,
        "run": run_name,
        "config_key": key,
        "ignored_rows": ignored,
        "setup": setup,
        "reference_point": {"macs_ratio": ref[0], "fid": ref[1],
                            "rule": f"macs_ratio {REF_MACS_RATIO}, fid {REF_FID_FACTOR} x the largest reported FID mean"},
        "rows": shown,
        "methods": methods,
        "budgets": budgets,
        "skipped": sorted(skipped.values(), key=lambda s: (str(s["method"]), budget_key(s["budget_ratio"]))),
        "search": search,
        "allocations": {n: _allocation_summary(n, a, setup.get("num_steps"))
                        for n, a in sorted(data.allocations.items())},
        "intervals": data.intervals if isinstance(data.intervals, dict) else None,
        "machine": first.get("machine"),
        "versions": first.get("versions"),
        "config": _yaml(data.config_text),
        "anytime": _anytime(data),
    }


def _anytime(data: RunData) -> dict[str, Any]:
    """The any-time curves and verdict lines (:func:`benchmarks.report.anytime.anytime_summary`)."""
    from benchmarks.report.anytime import anytime_summary

    return anytime_summary(data.records, data.allocations)
