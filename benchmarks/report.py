"""The Pareto-front report of a run, built only from what the run stored (``diffnas report RUN_DIR``).

Inputs (all optional except ``results.jsonl``; a missing one leaves its section out with a note):
``results.jsonl`` (``kind: bench`` rows of ``diffnas bench``, ``kind: bench_skip`` reasons,
``kind: search_trial`` rows of ``diffnas search``), ``allocations/*.json``, ``intervals.json``,
``similarity.png``, the sample grids the bench rows point to, ``config.yaml``. Nothing is
re-run: no model is loaded, no image generated. The same inputs give byte-identical outputs.

Outputs in ``RUN_DIR/report/``:

- ``index.html``: self-contained (CSS inline, every figure a base64 PNG ``<img>``; no network);
  a small inline script marks ``<body data-images-loaded="k" data-images-total="n">`` once the
  images have decoded (what the headless-browser test reads);
- ``report.md``: the same tables and figures (linked PNG files);
- ``pareto.png``, ``search_trials.png``, ``allocations.png``, ``similarity.png``, ``grids/*.png``;
- ``summary.json``: every number shown, with the schema below.

Which rows are reported: per (method, budget) the latest ``bench`` row whose ``config_key`` is
that of the latest ``bench`` row in the file (rows of other configurations are counted in
``summary.json`` as ``ignored_rows``, never mixed in).

Pareto fronts and hypervolume: each method's points are (MACs ratio, FID mean), both minimised;
MACs ratio = trajectory MACs / the base model's trajectory MACs (fvcore, same sampler and step
count). A point is on its method's front if no other point of that method is at most as large in
both and smaller in one. The hypervolume of a method is the area dominated by its points and
bounded by the reference point ``(macs_ratio = 1.05, fid = 1.1 x the largest FID mean of any
reported row)``, the same for every method of one report (stated in ``summary.json``).

``summary.json`` schema (``"schema": "diffnas-report/1"``)::

    schema            "diffnas-report/1"
    run               run name (from the rows, else the folder name)
    config_key        configuration key of the reported rows
    ignored_rows      bench rows of other configurations (not reported)
    setup             {extractor, num_generated (per seed), num_reference, feature_dim, seeds,
                       num_seeds, confidence, sampler, num_steps, device, latency_batch_size,
                       finetune: {steps_per_expert, batch_size, ...}}
    reference_point   {macs_ratio, fid, rule}
    rows              [ {method, budget_ratio (null for base), fid_mean, fid_ci_low, fid_ci_high,
                         fid_values, kid_mean, kid_ci_low, kid_ci_high, kid_values,
                         macs_per_trajectory, macs_ratio, latency_ms_per_image,
                         base_latency_ms_per_image, speedup, latency_group, finetune,
                         allocation_cost, grid, num_steps} ]  (method order, then budget)
    methods           {method: {points: [[macs_ratio, fid_mean], ...], pareto: [[...], ...],
                                hypervolume}}
    budgets           {"<budget>": [method, ...]}  rows reported at each budget
    skipped           [ {method, budget_ratio, reason} ]  latest reason of methods without a row
    search            {trials, complete, failed, feasible, infeasible, studies: {name: counts}}
                      or null
    allocations       {"<method>-<budget>": {method, budget_ratio, achieved_ratio, feasible,
                        macs_per_expert, steps_per_expert, per_call_ratio, cost}}
    intervals         {num_train_timesteps, boundaries, spans} or null
    machine, versions what the bench rows recorded
    config            the run's config.yaml, parsed (null if absent)
    files             report files written (relative to report/), sorted

Example:
    >>> hypervolume_2d([(0.2, 3.0), (0.5, 2.0), (0.8, 1.0)], (1.0, 4.0))
    1.5
    >>> pareto_indices([(0.2, 3.0), (0.5, 2.0), (0.6, 2.5)])
    [0, 1]
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "METHOD_LABELS",
    "ReportResult",
    "SCHEMA",
    "build_report",
    "build_summary",
    "fmt_ci",
    "fmt_num",
    "hypervolume_2d",
    "load_run",
    "pareto_indices",
    "reference_point",
]

SCHEMA = "diffnas-report/1"
#: Display order and labels of the compared methods.
METHOD_LABELS: dict[str, str] = {
    "routed": "routed (learned router)",
    "searched": "searched (Optuna)",
    "uniform": "uniform width",
    "static": "static pruning",
    "base_steps": "base, fewer steps",
    "base": "base model",
}
_COLORS = {"routed": "#d62728", "searched": "#1f77b4", "uniform": "#2ca02c", "static": "#9467bd",
           "base_steps": "#ff7f0e", "base": "#000000"}
_MARKERS = {"routed": "o", "searched": "s", "uniform": "^", "static": "D", "base_steps": "v", "base": "*"}
REF_MACS_RATIO = 1.05
REF_FID_FACTOR = 1.1


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


def _fmt_macs(macs: Any) -> str:
    if macs is None:
        return "-"
    m = float(macs)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if m >= scale:
            return f"{m / scale:.2f}{unit}"
    return f"{m:.0f}"


def _budget_key(b: Any) -> str:
    return "base" if b is None else f"{float(b):g}"


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


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if not path.is_file():
        return out
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError:
            log.warning("%s line %d is not valid JSON; skipped", path, lineno)
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def load_run(run_dir: str | Path) -> RunData:
    """Read the stored results of ``run_dir`` (``results.jsonl``, allocations, intervals, ...)."""
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
            try:
                allocations[f.stem] = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("cannot read %s (%s); left out of the report", f, exc)
    intervals = None
    ipath = path / "intervals.json"
    if ipath.is_file():
        try:
            data = json.loads(ipath.read_text())
            if isinstance(data, dict) and "num_train_timesteps" in data:
                intervals = {k: data[k] for k in ("num_train_timesteps", "boundaries", "spans", "num_intervals",
                                                  "measure", "criterion") if k in data}
        except json.JSONDecodeError as exc:
            log.warning("cannot read %s (%s)", ipath, exc)
    config_text = (path / "config.yaml").read_text() if (path / "config.yaml").is_file() else None
    sim = path / "similarity.png"
    return RunData(path, tuple(records), allocations, intervals, config_text, sim if sim.is_file() else None)


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
        latest[(str(r.get("method")), _budget_key(r.get("budget_ratio")))] = r
    order = {m: i for i, m in enumerate(METHOD_LABELS)}
    rows = sorted(latest.values(), key=lambda r: (order.get(str(r.get("method")), 99), str(r.get("method")),
                                                  -1.0 if r.get("budget_ratio") is None else float(r["budget_ratio"])))
    return rows, key, ignored


_ROW_KEYS = ("method", "budget_ratio", "fid_mean", "fid_ci_low", "fid_ci_high", "fid_values", "kid_mean",
             "kid_ci_low", "kid_ci_high", "kid_values", "macs_per_trajectory", "macs_ratio", "latency_ms_per_image",
             "base_latency_ms_per_image", "speedup", "latency_group", "finetune", "allocation_cost", "grid",
             "num_steps")


def _yaml(text: str | None) -> Any:
    if text is None:
        return None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _allocation_summary(name: str, a: Mapping[str, Any]) -> dict[str, Any]:
    macs = [int(m) for m in a.get("macs_per_expert", [])]
    steps = [int(s) for s in a.get("steps_per_expert", [])]
    base_traj = float(a.get("base_trajectory_macs") or 0)
    total_steps = sum(steps)
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


def _search_summary(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
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
    shown = [{k: r.get(k) for k in _ROW_KEYS} for r in rows]
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
            budgets.setdefault(_budget_key(r["budget_ratio"]), []).append(r["method"])
    budgets = dict(sorted(budgets.items(), key=lambda kv: float(kv[0])))
    have = {(r["method"], _budget_key(r["budget_ratio"])) for r in shown}
    skipped: dict[tuple[str, str], dict[str, Any]] = {}
    for r in data.records:
        if r.get("kind") != "bench_skip" or (key is not None and r.get("config_key") not in (None, key)):
            continue
        k2 = (str(r.get("method")), _budget_key(r.get("budget_ratio")))
        if k2 not in have:
            skipped[k2] = {"method": r.get("method"), "budget_ratio": r.get("budget_ratio"), "reason": r.get("reason")}
    search, _ = _search_summary(data.records)
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
        "skipped": sorted(skipped.values(), key=lambda s: (str(s["method"]), _budget_key(s["budget_ratio"]))),
        "search": search,
        "allocations": {n: _allocation_summary(n, a) for n, a in sorted(data.allocations.items())},
        "intervals": data.intervals if isinstance(data.intervals, dict) else None,
        "machine": first.get("machine"),
        "versions": first.get("versions"),
        "config": _yaml(data.config_text),
    }


# --------------------------------------------------------------------------------------------
# figures (matplotlib, Agg; deterministic PNG bytes for the same data)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9})
    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_pareto(summary: Mapping[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = summary["rows"]
    for metric, ax in zip(("fid", "kid"), axes):
        for m in summary["methods"]:
            pts = sorted(
                [(r["macs_ratio"], r[f"{metric}_mean"], r.get(f"{metric}_ci_low"), r.get(f"{metric}_ci_high"))
                 for r in rows if r["method"] == m and r.get("macs_ratio") is not None
                 and r.get(f"{metric}_mean") is not None])
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            lo = [p[1] - p[2] if p[2] is not None else 0.0 for p in pts]
            hi = [p[3] - p[1] if p[3] is not None else 0.0 for p in pts]
            ax.errorbar(xs, ys, yerr=[lo, hi], color=_COLORS.get(m, "gray"), marker=_MARKERS.get(m, "o"),
                        markersize=9 if m == "base" else 6, capsize=3, linestyle="-" if len(xs) > 1 else "none",
                        linewidth=1.0, label=METHOD_LABELS.get(m, m), alpha=0.9)
            if metric == "fid":
                front = summary["methods"][m]["pareto"]
                ax.scatter([p[0] for p in front], [p[1] for p in front], s=140, facecolors="none",
                           edgecolors=_COLORS.get(m, "gray"), linewidths=1.0, alpha=0.6)
        for b in summary["budgets"]:
            ax.axvline(float(b), color="#bbbbbb", linewidth=0.8, linestyle=":")
        ax.set_xlabel("trajectory MACs / base model's (fvcore)")
        ax.set_ylabel(f"{metric.upper()} (mean, {int(round(100 * (summary['setup'].get('confidence') or 0.95)))}% CI)")
        ax.set_title(f"{metric.upper()} vs MACs (lower-left is better)"
                     + ("; rings: each method's Pareto front" if metric == "fid" else ""))
        ax.grid(alpha=0.3)
    if rows:
        axes[0].legend(fontsize=8, loc="best")
        ref = summary["reference_point"]
        axes[0].plot([ref["macs_ratio"]], [ref["fid"]], marker="x", color="gray", linestyle="none")
        axes[0].annotate("HV ref", (ref["macs_ratio"], ref["fid"]), fontsize=7, color="gray",
                         xytext=(-30, -10), textcoords="offset points")
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no benchmark rows", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path)


def _plot_search(trials: Sequence[Mapping[str, Any]], path: Path) -> Path:
    plt = _plt()
    studies = sorted({str(t.get("study")) for t in trials})
    n = max(1, len(studies))
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False)
    for ax, study in zip(axes[0], studies):
        mine = [t for t in trials if str(t.get("study")) == study and t.get("state") == "complete"
                and t.get("quality") is not None and t.get("macs_ratio") is not None]
        fidelities = sorted({str(t.get("fidelity")) for t in mine})
        for fi, fid_name in enumerate(fidelities):
            sub = [t for t in mine if str(t.get("fidelity")) == fid_name]
            feas = [t for t in sub if t.get("feasible")]
            infeas = [t for t in sub if not t.get("feasible")]
            ax.scatter([t["macs_ratio"] for t in feas], [t["quality"] for t in feas], s=18,
                       color="#1f77b4" if fi == 0 else "#d62728", label=f"feasible ({fid_name})")
            ax.scatter([t["macs_ratio"] for t in infeas], [t["quality"] for t in infeas], s=22, marker="x",
                       color="#7f7f7f" if fi == 0 else "#ff9896", label=f"infeasible ({fid_name})")
        budgets = sorted({float(t["budget_ratio"]) for t in mine if t.get("budget_ratio") is not None})
        for b in budgets:
            ax.axvline(b, color="#bbbbbb", linewidth=0.8, linestyle=":")
        ax.set_title(f"study {study}")
        ax.set_xlabel("trajectory MACs ratio")
        ax.set_ylabel("trial quality (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _plot_allocations(allocs: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    plt = _plt()
    budgets = sorted({float(a["budget_ratio"]) for a in allocs.values() if a.get("budget_ratio") is not None})
    if not budgets:
        return None
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.4 * len(budgets), 3.6), squeeze=False)
    order = ["router", "search", "uniform", "static"]
    for ax, b in zip(axes[0], budgets):
        here = {a["method"]: a for a in allocs.values() if a.get("budget_ratio") is not None
                and abs(float(a["budget_ratio"]) - b) < 1e-9}
        names = [m for m in order if m in here] + sorted(m for m in here if m not in order)
        width = 0.8 / max(1, len(names))
        for i, m in enumerate(names):
            vals = [v if v is not None else 0.0 for v in here[m]["per_call_ratio"]]
            xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(vals))]
            color = {"router": _COLORS["routed"], "search": _COLORS["searched"], "uniform": _COLORS["uniform"]}.get(m, "gray")
            ax.bar(xs, vals, width=width, color=color, label=f"{m} ({here[m]['achieved_ratio']:.3f})")
        spans = next((here[m]["spans"] for m in names if here[m].get("spans")), None)
        n = len(next(iter(here.values()))["per_call_ratio"]) if here else 0
        ax.set_xticks(range(n))
        ax.set_xticklabels([f"[{s[0]},{s[1]})" for s in spans] if spans else [str(k) for k in range(n)],
                           fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.axhline(b, color="#bbbbbb", linewidth=0.8, linestyle=":")
        ax.set_title(f"budget {b:g}: MACs per call of each interval's expert")
        ax.set_xlabel("interval (training timesteps)")
        ax.set_ylabel("MACs per call / base model's")
        ax.legend(fontsize=7, title="method (achieved ratio)", title_fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _plot_similarity(intervals: Mapping[str, Any], matrix: Sequence[Sequence[float]], timesteps: Sequence[int],
                     path: Path) -> Path:
    plt = _plt()
    import numpy as np

    S = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    im = ax.imshow(S, cmap="viridis", origin="lower", extent=(-0.5, len(S) - 0.5, -0.5, len(S) - 0.5))
    for b in intervals.get("boundaries", []):
        pos = float(np.searchsorted(np.asarray(timesteps), b)) - 0.5
        ax.axhline(pos, color="white", linewidth=1.2)
        ax.axvline(pos, color="white", linewidth=1.2)
    ax.set_title("timestep similarity and intervals")
    ax.set_xlabel("grid index (low t first)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class ReportResult:
    """Files written by :func:`build_report`."""

    report_dir: Path
    index_html: Path
    report_md: Path
    summary_json: Path
    pngs: tuple[Path, ...]
    summary: dict[str, Any]


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table_rows(summary: Mapping[str, Any], budget: str) -> list[dict[str, Any]]:
    rows = [r for r in summary["rows"] if _budget_key(r["budget_ratio"]) == budget]
    base = [r for r in summary["rows"] if r["method"] == "base"]
    return base + rows


def _cells(r: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(column, text, machine value) of one table row: the md and html tables show ``text``;
    html carries ``value`` in ``data-value`` (what the consistency test compares)."""
    ft = r.get("finetune") or {}
    ft_text = "-" if not ft else f"{ft.get('steps_total', ft.get('steps_per_expert', '?'))} x {ft.get('batch_size', '?')}"
    cost = r.get("allocation_cost") or {}
    cost_text = "-"
    if cost:
        parts = []
        if cost.get("wall_s") is not None:
            parts.append(f"{float(cost['wall_s']):.0f} s")
        if cost.get("evaluations") is not None:
            parts.append(f"{cost['evaluations']} evals")
        cost_text = ", ".join(parts) or "-"
    return [
        ("method", METHOD_LABELS.get(r["method"], r["method"]), r["method"]),
        ("FID", fmt_ci(r.get("fid_mean"), r.get("fid_ci_low"), r.get("fid_ci_high"), 2), r.get("fid_mean")),
        ("KID", fmt_ci(r.get("kid_mean"), r.get("kid_ci_low"), r.get("kid_ci_high"), 4), r.get("kid_mean")),
        ("MACs ratio", fmt_num(r.get("macs_ratio"), 3), r.get("macs_ratio")),
        ("MACs/trajectory", _fmt_macs(r.get("macs_per_trajectory")), r.get("macs_per_trajectory")),
        ("ms/image", fmt_num(r.get("latency_ms_per_image"), 2), r.get("latency_ms_per_image")),
        ("speed-up", fmt_num(r.get("speedup"), 2), r.get("speedup")),
        ("steps", str(r.get("num_steps") if r.get("num_steps") is not None else "-"), r.get("num_steps")),
        ("fine-tune (steps x batch)", ft_text, None),
        ("search/routing cost", cost_text, None),
    ]


def _md_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "_no rows_\n"
    head = [c[0] for c in _cells(rows[0])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(c[1] for c in _cells(r)) + " |")
    return "\n".join(lines) + "\n"


def _html_table(rows: Sequence[Mapping[str, Any]], budget: str) -> str:
    if not rows:
        return "<p><em>no rows</em></p>"
    head = "".join(f"<th>{_esc(c[0])}</th>" for c in _cells(rows[0]))
    body = []
    for r in rows:
        tds = []
        for col, text, value in _cells(r):
            attr = "" if value is None else f' data-value="{_esc(json.dumps(value))}"'
            tds.append(f'<td data-col="{_esc(col)}"{attr}>{_esc(text)}</td>')
        body.append(f'<tr data-method="{_esc(r["method"])}" data-budget="{_esc(budget)}">' + "".join(tds) + "</tr>")
    return f'<table class="results" data-budget="{_esc(budget)}"><tr>{head}</tr>' + "".join(body) + "</table>"


_CSS = """body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:1.5em auto;
padding:0 1em;color:#222}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:left}th{background:#f3f3f3}img{max-width:100%;height:auto;border:1px solid #eee}
.grids{display:flex;flex-wrap:wrap;gap:12px}.grids figure{margin:0;width:260px}.grids img{width:256px}
figcaption{font-size:.8em;color:#555}pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em}
.note{color:#555;font-size:.9em}"""

_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  imgs.forEach(function (i) { if (!(i.complete && i.naturalWidth > 0)) { i.setAttribute('data-broken', '1'); } });
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok.length));
});
</script>"""


def _versions_text(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    out = []
    for group in ("machine", "versions"):
        for k, v in sorted((summary.get(group) or {}).items()):
            out.append((f"{group}.{k}", str(v)))
    return out


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> ReportResult:
    """Write the report of ``run_dir`` (``report/`` inside it unless ``out_dir``); see the module
    docstring. Only stored files are read."""
    data = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else data.path / "report"
    if out.exists():
        for stale in ("grids",):
            if (out / stale).is_dir():
                shutil.rmtree(out / stale)
    out.mkdir(parents=True, exist_ok=True)
    summary = build_summary(data)
    pngs: list[Path] = []
    figures: list[tuple[str, Path, str]] = []  # (section id, file, caption)

    pareto = _plot_pareto(summary, out / "pareto.png")
    pngs.append(pareto)

    search, trials = _search_summary(data.records)
    search_png = None
    if trials:
        search_png = _plot_search(trials, out / "search_trials.png")
        pngs.append(search_png)

    sim_png = None
    if data.similarity_png is not None:
        sim_png = out / "similarity.png"
        shutil.copyfile(data.similarity_png, sim_png)
        pngs.append(sim_png)
    else:
        ipath = data.path / "intervals.json"
        if ipath.is_file():
            raw = json.loads(ipath.read_text())
            if isinstance(raw, dict) and raw.get("similarity") and raw.get("timesteps") and summary["intervals"]:
                sim_png = _plot_similarity(summary["intervals"], raw["similarity"], raw["timesteps"],
                                           out / "similarity.png")
                pngs.append(sim_png)

    alloc_png = _plot_allocations(summary["allocations"], out / "allocations.png") if summary["allocations"] else None
    if alloc_png is not None:
        pngs.append(alloc_png)

    grids: list[tuple[Mapping[str, Any], Path]] = []
    for r in summary["rows"]:
        g = r.get("grid")
        if not g:
            continue
        src = data.path / g
        if not src.is_file():
            log.warning("sample grid %s of %s is missing; left out", src, r["method"])
            continue
        dst = out / "grids" / f"{r['method']}-{_budget_key(r['budget_ratio'])}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        grids.append((r, dst))
        pngs.append(dst)

    files = sorted({str(p.relative_to(out)) for p in pngs} | {"index.html", "report.md", "summary.json"})
    summary["files"] = files
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")

    md = _markdown(summary, search, pareto, search_png, sim_png, alloc_png, grids, data.config_text)
    md_path = out / "report.md"
    md_path.write_text(md)
    page = _html(summary, search, pareto, search_png, sim_png, alloc_png, grids, data.config_text)
    html_path = out / "index.html"
    html_path.write_text(page)
    log.info("report written to %s (%d figures)", html_path, len(pngs))
    return ReportResult(out, html_path, md_path, summary_path, tuple(pngs), summary)


def _setup_lines(summary: Mapping[str, Any]) -> list[str]:
    s = summary["setup"]
    conf = s.get("confidence")
    lines = []
    if s.get("extractor") is not None:
        lines.append(
            f"FID and KID (clean-fid; {s.get('extractor')} features, {s.get('feature_dim')}-d): mean and "
            f"{int(round(100 * (conf or 0.95)))}% Student-t interval over {s.get('num_seeds')} sampling seeds "
            f"{s.get('seeds')}, {s.get('num_generated')} generated images per seed against "
            f"{s.get('num_reference')} reference images; KID is clean-fid's raw value (not x1000)."
        )
        lines.append(
            f"Sampler {s.get('sampler')} with {s.get('num_steps')} steps for every method (base, fewer steps: fewer); "
            f"MACs counted with fvcore (attention included) per call at batch 1, summed over the trajectory."
        )
        lines.append(
            f"Latency: wall time of a whole trajectory at batch {s.get('latency_batch_size')} divided by the batch, "
            f"median of {s.get('latency_repeats')} runs, timed round-robin with the base model in the same run "
            f"(device {s.get('device')}); speed-up = base latency / method latency from that same run."
        )
    ft = s.get("finetune")
    if ft:
        lines.append(
            f"Equal fine-tuning budget for every pruned method: {ft.get('steps_per_expert')} steps x "
            f"{ft.get('batch_size')} images per expert ({ft.get('images_total')} images in all per method; "
            f"the static model gets all of them)."
        )
    ref = summary["reference_point"]
    lines.append(
        f"Hypervolume reference point: MACs ratio {ref['macs_ratio']:g}, FID {fmt_num(ref['fid'], 3)} "
        f"({ref['rule']})."
    )
    return lines


def _markdown(summary: Mapping[str, Any], search: Any, pareto: Path, search_png: Path | None,
              sim_png: Path | None, alloc_png: Path | None, grids: Sequence[tuple[Mapping[str, Any], Path]],
              config_text: str | None) -> str:
    out = [f"# Benchmark report: run `{summary['run']}`", ""]
    out += [f"- {line}" for line in _setup_lines(summary)]
    out += ["", "## Quality vs MACs (Pareto fronts)", "", "![pareto](pareto.png)", "",
            "| method | points | Pareto points | hypervolume |", "|---|---|---|---|"]
    for m, v in summary["methods"].items():
        out.append(f"| {METHOD_LABELS.get(m, m)} | {len(v['points'])} | {len(v['pareto'])} | "
                   f"{fmt_num(v['hypervolume'], 4)} |")
    for b in summary["budgets"]:
        out += ["", f"## Budget {b}", "", _md_table(_table_rows(summary, b))]
    if summary["skipped"]:
        out += ["", "## Methods not run", ""]
        out += [f"- {s['method']} at {_budget_key(s['budget_ratio'])}: {s['reason']}" for s in summary["skipped"]]
    out += ["", "## Search trials", ""]
    if search_png is not None and search:
        out += [f"{search['trials']} trials: {search['complete']} complete ({search['feasible']} feasible, "
                f"{search['infeasible']} infeasible), {search['failed']} failed.", "", "![search trials](search_trials.png)"]
    else:
        out += ["_no search trials in results.jsonl_"]
    out += ["", "## Timestep similarity and intervals", ""]
    iv = summary["intervals"]
    if iv:
        out += ["Intervals (training timesteps): " + ", ".join(f"[{a}, {b})" for a, b in iv.get("spans", []))]
    out += ["", "![similarity](similarity.png)" if sim_png is not None else "_no similarity plot stored_"]
    out += ["", "## Allocations (MACs per interval)", ""]
    if alloc_png is not None:
        out += ["![allocations](allocations.png)", "", "| allocation | achieved ratio | MACs/call ratio per interval | steps per interval |",
                "|---|---|---|---|"]
        for n, a in summary["allocations"].items():
            out.append(f"| {n} | {fmt_num(a['achieved_ratio'], 3)} | "
                       + ", ".join(fmt_num(v, 3) for v in a["per_call_ratio"]) + " | "
                       + ", ".join(str(s) for s in a["steps_per_expert"]) + " |")
    else:
        out += ["_no allocations stored_"]
    out += ["", "## Sample grids", ""]
    for r, g in grids:
        out += [f"**{METHOD_LABELS.get(r['method'], r['method'])}, budget {_budget_key(r['budget_ratio'])}** "
                f"(FID {fmt_num(r.get('fid_mean'))})", "", f"![{r['method']}]({g.parent.name}/{g.name})", ""]
    if not grids:
        out += ["_no sample grids stored_"]
    out += ["", "## Machine and versions", ""]
    out += [f"- {k}: {v}" for k, v in _versions_text(summary)] or ["_not recorded_"]
    out += ["", "## Config", "", "```yaml", (config_text or "(config.yaml not found)").rstrip(), "```", ""]
    return "\n".join(out)


def _img(path: Path, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{_b64(path)}">'


def _html(summary: Mapping[str, Any], search: Any, pareto: Path, search_png: Path | None, sim_png: Path | None,
          alloc_png: Path | None, grids: Sequence[tuple[Mapping[str, Any], Path]], config_text: str | None) -> str:
    p = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>diffnas report: {_esc(summary['run'])}"
         f"</title><style>{_CSS}</style></head><body>", f"<h1>Benchmark report: run <code>{_esc(summary['run'])}</code></h1>",
         "<ul>" + "".join(f"<li>{_esc(line)}</li>" for line in _setup_lines(summary)) + "</ul>",
         "<h2 id=\"pareto\">Quality vs MACs (Pareto fronts)</h2>", _img(pareto, "Pareto fronts"),
         "<table class=\"hypervolume\"><tr><th>method</th><th>points</th><th>Pareto points</th><th>hypervolume</th></tr>"]
    for m, v in summary["methods"].items():
        p.append(f'<tr data-method="{_esc(m)}"><td>{_esc(METHOD_LABELS.get(m, m))}</td><td>{len(v["points"])}</td>'
                 f'<td>{len(v["pareto"])}</td><td data-value="{_esc(json.dumps(v["hypervolume"]))}">'
                 f'{_esc(fmt_num(v["hypervolume"], 4))}</td></tr>')
    p.append("</table>")
    for b in summary["budgets"]:
        p += [f'<h2 id="budget-{_esc(b)}">Budget {_esc(b)}</h2>', _html_table(_table_rows(summary, b), b)]
    if summary["skipped"]:
        p += ["<h2>Methods not run</h2><ul>"] + [
            f"<li>{_esc(s['method'])} at {_esc(_budget_key(s['budget_ratio']))}: {_esc(s['reason'])}</li>"
            for s in summary["skipped"]] + ["</ul>"]
    p.append("<h2 id=\"search\">Search trials</h2>")
    if search_png is not None and search:
        p += [f"<p>{search['trials']} trials: {search['complete']} complete ({search['feasible']} feasible, "
              f"{search['infeasible']} infeasible), {search['failed']} failed. Feasible and infeasible trials are "
              f"drawn apart (dots vs crosses).</p>", _img(search_png, "search trials")]
    else:
        p.append("<p class=\"note\">no search trials in results.jsonl</p>")
    p.append("<h2 id=\"intervals\">Timestep similarity and intervals</h2>")
    iv = summary["intervals"]
    if iv:
        p.append("<p>Intervals (training timesteps): " + _esc(", ".join(f"[{a}, {b})" for a, b in iv.get("spans", []))) + "</p>")
    p.append(_img(sim_png, "similarity heatmap") if sim_png is not None else "<p class=\"note\">no similarity plot stored</p>")
    p.append("<h2 id=\"allocations\">Allocations (MACs per interval)</h2>")
    if alloc_png is not None:
        p.append(_img(alloc_png, "allocations"))
        p.append("<table><tr><th>allocation</th><th>achieved ratio</th><th>MACs/call ratio per interval</th>"
                 "<th>steps per interval</th></tr>")
        for n, a in summary["allocations"].items():
            p.append(f"<tr><td>{_esc(n)}</td><td>{_esc(fmt_num(a['achieved_ratio'], 3))}</td><td>"
                     + _esc(", ".join(fmt_num(v, 3) for v in a["per_call_ratio"])) + "</td><td>"
                     + _esc(", ".join(str(s) for s in a["steps_per_expert"])) + "</td></tr>")
        p.append("</table>")
    else:
        p.append("<p class=\"note\">no allocations stored</p>")
    p.append("<h2 id=\"grids\">Sample grids</h2><div class=\"grids\">")
    for r, g in grids:
        cap = f"{METHOD_LABELS.get(r['method'], r['method'])}, budget {_budget_key(r['budget_ratio'])} (FID {fmt_num(r.get('fid_mean'))})"
        p.append(f"<figure>{_img(g, cap)}<figcaption>{_esc(cap)}</figcaption></figure>")
    p.append("</div>")
    if not grids:
        p.append("<p class=\"note\">no sample grids stored</p>")
    p.append("<h2 id=\"machine\">Machine and versions</h2><table>")
    p += [f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in _versions_text(summary)]
    p.append("</table>")
    p.append(f"<h2 id=\"config\">Config</h2><pre>{_esc(config_text or '(config.yaml not found)')}</pre>")
    digest = hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]
    p.append(f"<p class=\"note\">Built from stored results only (summary.json digest {digest}).</p>")
    p.append(_SCRIPT)
    p.append("</body></html>\n")
    return "\n".join(p)
