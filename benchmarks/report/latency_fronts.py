"""Quality vs measured latency: the report's FID vs ms/image fronts, one per timed batch size.

MACs are what the budgets count; users decide on wall-clock time, and at equal MACs methods differ
in speed (fewer steps run no extra kernels; a pruned expert's narrow convolutions realise less than
its MACs reduction). The bench times every method's whole trajectory at ``bench.latency_batch_size``
and at every ``bench.latency_batch_sizes`` size, all round-robin in one call per budget with the
base model (:func:`nas.latency.compare_latency_batches`), and stores per row
``latency_by_batch = {"<size>": {ms_per_image, reference_ms_per_image, speedup}}``.

:func:`latency_fronts` turns the reported rows into ``summary["latency_fronts"]``::

    available      true when at least one row has latency_by_batch
    note           what the fronts are, the machine, or why they are left out
    machine        where the latency was timed, in words
    batch_sizes    sizes with points, increasing
    rows_without   reported rows timed before latency_by_batch existed (not on the fronts)
    fronts         {"<size>": {method: {points: [[ms_per_image, fid_mean, budget_ratio, speedup], ...],
                                        pareto: [[ms_per_image, fid_mean], ...]}}}

Ms per image is comparable only within one budget's timing (one rotation); across budgets the
machine's load may differ, which the note says. :func:`plot_latency_fronts` draws
``latency_fronts.png`` (one panel per size); :func:`latency_md` / :func:`latency_html` write the
report's section.

Example:
    >>> rows = [{"method": "base", "budget_ratio": None, "fid_mean": 5.0,
    ...          "latency_by_batch": {"1": {"ms_per_image": 9.0}, "64": {"ms_per_image": 2.0}}},
    ...         {"method": "fewer_steps", "budget_ratio": 0.5, "fid_mean": 7.0,
    ...          "latency_by_batch": {"1": {"ms_per_image": 5.0}, "64": {"ms_per_image": 1.0}}}]
    >>> f = latency_fronts(rows, {"device": "cpu", "cpu_count": 2})
    >>> f["available"], f["batch_sizes"], f["fronts"]["64"]["fewer_steps"]["pareto"]
    (True, [1, 64], [[1.0, 7.0]])
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report.summary import fmt_num, method_label, pareto_indices
from benchmarks.report.verdict import machine_text

__all__ = ["latency_fronts", "latency_html", "latency_md", "plot_latency_fronts"]

PNG = "latency_fronts.png"


def latency_fronts(rows: Sequence[Mapping[str, Any]], machine: Mapping[str, Any] | None) -> dict[str, Any]:
    """``summary["latency_fronts"]`` from the report's rows (module docstring)."""
    where = machine_text(machine)
    timed = [r for r in rows if isinstance(r.get("latency_by_batch"), Mapping) and r.get("fid_mean") is not None]
    without = sum(1 for r in rows if not isinstance(r.get("latency_by_batch"), Mapping))
    if not timed:
        return {"available": False, "machine": where, "batch_sizes": [], "rows_without": without, "fronts": {},
                "note": "no row has latency per batch size (rows benched before bench.latency_batch_sizes existed, "
                        "or an empty bench.latency_batch_sizes)"}
    sizes = sorted({int(b) for r in timed for b in r["latency_by_batch"]})
    fronts: dict[str, dict[str, Any]] = {}
    for b in sizes:
        per_method: dict[str, Any] = {}
        for m in dict.fromkeys(str(r["method"]) for r in timed):
            pts = [[float(r["latency_by_batch"][str(b)]["ms_per_image"]), float(r["fid_mean"]), r.get("budget_ratio"),
                    _speedup(r["latency_by_batch"][str(b)])]
                   for r in timed if str(r["method"]) == m and str(b) in r["latency_by_batch"]]
            if not pts:
                continue
            pts.sort(key=lambda p: (p[0], p[1]))
            front = [pts[i][:2] for i in pareto_indices([(p[0], p[1]) for p in pts])]
            per_method[m] = {"points": pts, "pareto": front}
        fronts[str(b)] = per_method
    note = (f"FID against measured wall time per image of a whole trajectory, at batch "
            f"{' and '.join(str(b) for b in sizes)}, on {where}; every method of a budget was timed "
            "round-robin with the base model at every batch size in one call, so speed-ups within a budget "
            "share the machine's load (ms across budgets may not)")
    if without:
        note += f"; {without} reported row(s) were timed at one batch size only and are not drawn"
    return {"available": True, "machine": where, "batch_sizes": sizes, "rows_without": without, "fronts": fronts,
            "note": note}


def _speedup(entry: Mapping[str, Any]) -> float | None:
    """The stored speed-up against the base model of the same rotation, or None."""
    v = entry.get("speedup")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def plot_latency_fronts(fronts: Mapping[str, Any], path: Path) -> Path | None:
    """``latency_fronts.png``: one panel per batch size, FID vs ms/image (log), one line per method
    (its Pareto front ringed); None when there is nothing to draw."""
    if not fronts.get("available"):
        return None
    from benchmarks.report.figures import _plt, _save, method_style

    plt = _plt()
    from matplotlib.ticker import FuncFormatter
    sizes = list(fronts["batch_sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.4 * len(sizes), 4.0), squeeze=False)
    for ax, b in zip(axes[0], sizes):
        for m, v in fronts["fronts"][str(b)].items():
            st = method_style(m)
            xs = [p[0] for p in v["points"]]
            ys = [p[1] for p in v["points"]]
            ax.plot(xs, ys, color=st.color, marker=st.marker, markersize=st.marker_size,
                    linestyle="-" if len(xs) > 1 else "none", linewidth=1.0, label=st.label,
                    markerfacecolor="none" if st.highlight else None, zorder=3 if st.highlight else 2)
            ax.scatter([p[0] for p in v["pareto"]], [p[1] for p in v["pareto"]], s=140, facecolors="none",
                       edgecolors=st.color, linewidths=1.0, alpha=0.6)
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(f"ms per image at batch {b} (log; whole trajectory)")
        ax.set_ylabel("FID (mean over seeds)")
        ax.set_title(f"FID vs latency, batch {b} (lower-left is better)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"measured on {fronts['machine']}", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _table(fronts: Mapping[str, Any]) -> list[list[str]]:
    """Header and one line per (method, budget), methods in report order: ms/image and the
    speed-up against the base model at each batch size."""
    sizes = fronts["batch_sizes"]
    head = ["method", "budget", "FID"] + [f"ms/image (speed-up) @ batch {b}" for b in sizes]
    order = list(dict.fromkeys(m for b in sizes for m in fronts["fronts"][str(b)]))
    seen: dict[tuple[str, Any], list[str]] = {}
    for b in sizes:
        for m, v in fronts["fronts"][str(b)].items():
            for ms, fid, budget, speedup in v["points"]:
                row = seen.setdefault((m, budget), [method_label(m), "-" if budget is None else f"{budget:g}",
                                                    fmt_num(fid)] + ["-"] * len(sizes))
                row[3 + sizes.index(b)] = fmt_num(ms, 3) + ("" if speedup is None else f" ({speedup:.2f}x)")
    keys = sorted(seen, key=lambda k: (order.index(k[0]), -1.0 if k[1] is None else float(k[1])))
    return [head] + [seen[k] for k in keys]


def latency_md(fronts: Mapping[str, Any] | None, png: Path | None) -> list[str]:
    """The report.md section (after its heading)."""
    fronts = fronts or {}
    if not fronts.get("available"):
        return [f"_Left out: {fronts.get('note') or 'no latency per batch size stored'}._"]
    t = _table(fronts)
    out = [fronts["note"] + ".", ""]
    if png is not None:
        out += [f"![latency fronts]({PNG})", ""]
    out += ["| " + " | ".join(t[0]) + " |", "|" + "---|" * len(t[0])] + ["| " + " | ".join(r) + " |" for r in t[1:]]
    return out


def latency_html(fronts: Mapping[str, Any] | None, img: str) -> str:
    """The index.html section, heading included (``img``: the figure's ``<img>`` tag or "")."""
    fronts = fronts or {}
    head = '<h2 id="latency">Quality vs measured latency (batch 1 and batch 64 by default)</h2>'
    if not fronts.get("available"):
        return head + f'<p class="note">Left out: {html.escape(str(fronts.get("note") or "no data"))}.</p>'
    t = _table(fronts)
    cells = "".join(f"<th>{html.escape(c)}</th>" for c in t[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in t[1:])
    return (head + f'<p class="note">{html.escape(fronts["note"])}.</p>' + img
            + f'<table class="latency"><tr>{cells}</tr>{body}</table>')
