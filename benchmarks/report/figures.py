"""The report's figures (matplotlib, Agg; deterministic PNG bytes for the same data), drawn from
the summary of :func:`benchmarks.report.summary.build_summary`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.methods import all_methods

__all__ = ["MethodStyle", "method_style", "plot_allocations", "plot_anytime", "plot_pareto", "plot_search",
           "plot_similarity"]


@dataclass(frozen=True)
class MethodStyle:
    """How a method is drawn: its registered label, colour, marker and marker size, and whether it
    is highlighted (large, hollow, on top)."""

    label: str
    color: str = "gray"
    marker: str = "o"
    marker_size: float = 6.0
    highlight: bool = False


def method_style(name: str) -> MethodStyle:
    """The drawing style of method ``name`` from the registry (gray circles for an unregistered one).

    Example:
        >>> method_style("search").color, method_style("unknown").color
        ('#1f77b4', 'gray')
    """
    m = all_methods().get(name)
    if m is None:
        return MethodStyle(name)
    return MethodStyle(m.label, m.color, m.marker, float(m.marker_size), bool(m.highlight))


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


def plot_pareto(summary: Mapping[str, Any], path: Path) -> Path:
    """``pareto.png``: FID and KID (mean and interval) against the MACs ratio, one line per method,
    each method's Pareto front ringed, the budgets and the hypervolume reference marked."""
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
            # a highlighted method is drawn large and hollow, on top: when another method keeps
            # its allocation (the search enqueues the router's) the two points coincide and both
            # must stay visible
            st = method_style(m)
            hollow = st.highlight
            ax.errorbar(xs, ys, yerr=[lo, hi], color=st.color, marker=st.marker, markersize=st.marker_size, capsize=3,
                        linestyle="-" if len(xs) > 1 else "none", linewidth=1.0, label=st.label,
                        alpha=0.9, markerfacecolor="none" if hollow else None, markeredgewidth=1.6 if hollow else None,
                        zorder=3 if hollow else 2)
            if metric == "fid":
                front = summary["methods"][m]["pareto"]
                ax.scatter([p[0] for p in front], [p[1] for p in front], s=140, facecolors="none",
                           edgecolors=st.color, linewidths=1.0, alpha=0.6)
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


def plot_search(trials: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``search_trials.png``: each study's trials, quality against MACs ratio, feasible and
    infeasible apart, one colour per fidelity."""
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


def plot_allocations(allocs: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    """``allocations.png``: per budget, each allocation's MACs per call of every interval's expert
    (fraction of the base model's); None when no allocation has a budget."""
    plt = _plt()
    budgets = sorted({float(a["budget_ratio"]) for a in allocs.values() if a.get("budget_ratio") is not None})
    if not budgets:
        return None
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.4 * len(budgets), 3.6), squeeze=False)
    order = [m for m, method in all_methods().items() if method.mixture]
    for ax, b in zip(axes[0], budgets):
        here = {a["method"]: a for a in allocs.values() if a.get("budget_ratio") is not None
                and abs(float(a["budget_ratio"]) - b) < 1e-9}
        names = [m for m in order if m in here] + sorted(m for m in here if m not in order)
        width = 0.8 / max(1, len(names))
        for i, m in enumerate(names):
            vals = [v if v is not None else 0.0 for v in here[m]["per_call_ratio"]]
            xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(vals))]
            ax.bar(xs, vals, width=width, color=method_style(m).color, label=f"{m} ({here[m]['achieved_ratio']:.3f})")
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


def plot_similarity(intervals: Mapping[str, Any], matrix: Sequence[Sequence[float]], timesteps: Sequence[int],
                     path: Path) -> Path:
    """``similarity.png``: the timestep similarity matrix with the interval boundaries."""
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


def plot_anytime(anytime: Mapping[str, Any], path: Path) -> Path:
    """``anytime.png``: one row per budget, the best proxy so far against evaluations (left) and
    wall seconds (right) for the router and each search; the router's curve starts after its
    (shared) agent training, drawn as a dotted lead-in from the origin."""
    plt = _plt()
    budgets = list(anytime["budgets"])
    fig, axes = plt.subplots(max(1, len(budgets)), 2, figsize=(10, 3.3 * max(1, len(budgets))), squeeze=False)
    for row, b in zip(axes, budgets):
        entry = anytime["budgets"][b]
        for col, (ax, idx, unit) in enumerate(zip(row, (0, 1), ("evaluations", "wall seconds"))):
            for m, c in entry["curves"].items():
                pts = [p for p in c["points"] if p[2] is not None]
                if not pts:
                    continue
                st = method_style(m)
                xs = [max(float(p[idx]), 1e-3) for p in pts]
                ys = [float(p[2]) for p in pts]
                ax.step(xs, ys, where="post", color=st.color, linewidth=1.6 if m == "router" else 1.1,
                        label=st.label if col == 0 else None)
                ax.plot([xs[-1]], [ys[-1]], marker=st.marker, color=st.color, markersize=5)
                if m == "router":
                    start = c["offset_evaluations"] if idx == 0 else c["offset_seconds"]
                    if start:
                        ax.axvline(float(start), color=st.color, linestyle=":", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_xlabel(f"{unit} (log)" + ("; dotted: router training" if col == 0 else ""))
            ax.set_ylabel("best proxy so far (lower is better)")
            ax.set_title(f"budget {b}: best proxy vs {unit}")
            ax.grid(alpha=0.3, which="both")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
