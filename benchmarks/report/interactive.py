"""The interactive Pareto plot of ``index.html`` (plotly, its JavaScript embedded: the page works
offline and from a file). Hovering a point shows its allocation (steps and expert size per
interval), FID with its interval, KID, MACs ratio, latency and speed-up.

The figure is built from the summary alone; the same summary gives the same HTML (fixed div id,
no random ids). Returns None when plotly is not installed (the static ``pareto.png`` stays).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from benchmarks.report.figures import method_style
from benchmarks.report.summary import fmt_ci, fmt_num
from nas.methods import budget_key

__all__ = ["DIV_ID", "allocation_text", "pareto_html"]

#: id of the plot's ``<div>`` (what the browser test looks for)
DIV_ID = "pareto-interactive"

_MPL_TO_PLOTLY = {"o": "circle", "s": "square", "^": "triangle-up", "v": "triangle-down", "D": "diamond",
                  "d": "diamond", "x": "x", "*": "star", "P": "cross", "+": "cross", "p": "pentagon", "h": "hexagon"}


def allocation_text(row: Mapping[str, Any], allocations: Mapping[str, Mapping[str, Any]]) -> str:
    """A row's allocation in words: per interval, its steps and its expert's MACs per call as a
    fraction of the base model's; the step count for the single-model methods.

    Example:
        >>> allocation_text({"method": "router", "budget_ratio": 0.5, "num_steps": 20},
        ...     {"router-0.5": {"spans": [[0, 400], [400, 1000]], "steps_per_expert": [8, 12],
        ...                     "per_call_ratio": [0.3, 0.7]}})
        '[0, 400): 8 steps, expert 0.30x; [400, 1000): 12 steps, expert 0.70x'
        >>> allocation_text({"method": "fewer_steps", "budget_ratio": 0.3, "num_steps": 3}, {})
        'base model, 3 steps'
    """
    a = allocations.get(f"{row['method']}-{budget_key(row.get('budget_ratio'))}")
    if a and a.get("steps_per_expert"):
        spans = a.get("spans") or [None] * len(a["steps_per_expert"])
        steps = row.get("steps_per_interval") or a["steps_per_expert"]
        parts = []
        for span, n, ratio in zip(spans, steps, a.get("per_call_ratio") or [None] * len(steps)):
            where = f"[{span[0]}, {span[1]})" if span else "interval"
            parts.append(f"{where}: {n} steps, expert {fmt_num(ratio)}x")
        return "; ".join(parts)
    who = {"base": "base model", "fewer_steps": "base model", "static": "one statically pruned model"}.get(
        str(row["method"]), str(row["method"]))
    per = row.get("steps_per_interval")
    steps = f"{row.get('num_steps')} steps" + (f" ({'+'.join(str(s) for s in per)} per interval)" if per else "")
    return f"{who}, {steps}"


def pareto_html(summary: Mapping[str, Any]) -> str | None:
    """The ``<div>`` and scripts of the interactive FID-vs-MACs plot (plotly.js embedded), or None
    without plotly."""
    try:
        import plotly.graph_objects as go
        from plotly.offline import get_plotlyjs
    except ImportError:
        return None
    fig = go.Figure()
    conf = int(round(100 * (summary["setup"].get("confidence") or 0.95)))
    for m in summary["methods"]:
        rows = sorted((r for r in summary["rows"] if r["method"] == m and r.get("macs_ratio") is not None
                       and r.get("fid_mean") is not None), key=lambda r: float(r["macs_ratio"]))
        if not rows:
            continue
        st = method_style(m)
        custom = [[allocation_text(r, summary["allocations"]),
                   fmt_ci(r.get("fid_mean"), r.get("fid_ci_low"), r.get("fid_ci_high"), 2),
                   fmt_ci(r.get("kid_mean"), r.get("kid_ci_low"), r.get("kid_ci_high"), 4),
                   fmt_num(r.get("latency_ms_per_image")), fmt_num(r.get("speedup")),
                   budget_key(r.get("budget_ratio"))] for r in rows]
        lo = [float(r["fid_mean"]) - float(r["fid_ci_low"]) if r.get("fid_ci_low") is not None else 0.0 for r in rows]
        hi = [float(r["fid_ci_high"]) - float(r["fid_mean"]) if r.get("fid_ci_high") is not None else 0.0 for r in rows]
        fig.add_trace(go.Scatter(
            x=[float(r["macs_ratio"]) for r in rows], y=[float(r["fid_mean"]) for r in rows], name=st.label,
            mode="lines+markers" if len(rows) > 1 else "markers",
            marker={"color": st.color, "symbol": _MPL_TO_PLOTLY.get(st.marker, "circle") + ("-open" if st.highlight else ""),
                    "size": st.marker_size * 1.6},
            line={"color": st.color, "width": 1},
            error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo, "thickness": 1},
            customdata=custom,
            hovertemplate=(f"<b>{st.label}</b>, budget %{{customdata[5]}}<br>allocation: %{{customdata[0]}}<br>"
                           f"FID %{{customdata[1]}} ({conf}% interval)<br>KID %{{customdata[2]}}<br>"
                           "MACs ratio %{x:.3f}<br>latency %{customdata[3]} ms/image, speed-up %{customdata[4]}x"
                           "<extra></extra>"),
        ))
    for b in summary["budgets"]:
        fig.add_vline(x=float(b), line={"color": "#bbbbbb", "width": 1, "dash": "dot"})
    fig.update_layout(
        title="FID vs trajectory MACs (lower-left is better; hover a point for its allocation)",
        xaxis_title="trajectory MACs / base model's (fvcore)", yaxis_title=f"FID (mean, {conf}% interval)",
        template="plotly_white", height=480, hovermode="closest", legend={"font": {"size": 11}},
    )
    spec = json.dumps(fig.to_plotly_json(), sort_keys=True, default=_jsonable)
    js = get_plotlyjs()
    return (f'<div id="{DIV_ID}" style="width:100%;height:480px"></div>\n'
            f"<script>{js}</script>\n"
            f'<script id="{DIV_ID}-spec" type="application/json">{_script_safe(spec)}</script>\n'
            "<script>(function () {\n"
            f"  var spec = JSON.parse(document.getElementById('{DIV_ID}-spec').textContent);\n"
            f"  var div = document.getElementById('{DIV_ID}');\n"
            "  Plotly.newPlot(div, spec.data, spec.layout, {displaylogo: false, responsive: true}).then(function () {\n"
            "    div.setAttribute('data-rendered', String(div.querySelectorAll('.scatterlayer .point').length));\n"
            "  });\n"
            "})();</script>")


def _script_safe(text: str) -> str:
    """JSON inside ``<script>``: no ``</`` can close the element early."""
    return text.replace("</", "<\\/")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
