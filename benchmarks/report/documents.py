"""The report's documents: ``report.md`` (linked PNG files) and the self-contained ``index.html``
(CSS inline, every figure a base64 PNG), both built as text from the summary and the figures' files.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report.guidance import guidance_html, guidance_md
from benchmarks.report.latency_fronts import latency_html, latency_md
from benchmarks.report.summary import fmt_ci, fmt_macs, fmt_num, method_label
from nas.methods import budget_key
from nas.search.allocations import KNOWN_POINT_SOURCES as ENQUEUED_SOURCES  # enqueued before sampling

__all__ = ["render_html", "render_markdown"]


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table_rows(summary: Mapping[str, Any], budget: str) -> list[dict[str, Any]]:
    rows = [r for r in summary["rows"] if budget_key(r["budget_ratio"]) == budget]
    base = [r for r in summary["rows"] if r["method"] == "base"]
    return base + rows


def _cells(r: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(column, text, machine value) of one table row: the md and html tables show ``text``;
    html carries ``value`` in ``data-value`` (what the consistency test compares)."""
    ft = r.get("finetune") or {}
    ft_text = "-" if not ft else f"{ft.get('steps_total', ft.get('steps_per_expert', '?'))} x {ft.get('batch_size', '?')}"
    val = ft.get("validation")
    if val:  # bench.finetune_validation_images: which of the two mixtures the bench scored
        ft_text += (f"; validation FID {float(val['fid_finetuned']):.3f} fine-tuned, {float(val['fid_untuned']):.3f} "
                    f"untuned: {val['kept']} kept")
    cost = r.get("allocation_cost") or {}
    cost_text = "-"
    if cost:
        parts = []
        if cost.get("wall_s") is not None:
            parts.append(f"{float(cost['wall_s']):.0f} s")
        if cost.get("evaluations") is not None:
            parts.append(f"{cost['evaluations']} evals")
        cost_text = ", ".join(parts) or "-"
        if cost.get("source") in ENQUEUED_SOURCES:  # the search's best is a point it was seeded with
            cost_text += f"; best = the {cost['source']} allocation, enqueued"
    cond = []  # class-conditional rows: how often the requested class is recognised, at which guidance
    if r.get("class_accuracy") is not None:
        acc = float(r["class_accuracy"])
        what = "prompt" if (r.get("macs_parts") or {}).get("text_encoder") else "class"  # a text model: prompts
        cond = [(f"{what} acc (guidance {float(r.get('guidance_scale') or 1.0):g})", f"{100 * acc:.1f}%", acc)]
    return [
        ("method", method_label(r["method"]), r["method"]),
        ("FID", fmt_ci(r.get("fid_mean"), r.get("fid_ci_low"), r.get("fid_ci_high"), 2), r.get("fid_mean")),
        ("KID", fmt_ci(r.get("kid_mean"), r.get("kid_ci_low"), r.get("kid_ci_high"), 4), r.get("kid_mean")),
        *cond,
        ("MACs ratio", fmt_num(r.get("macs_ratio"), 3), r.get("macs_ratio")),
        ("MACs/trajectory", fmt_macs(r.get("macs_per_trajectory")), r.get("macs_per_trajectory")),
        ("ms/image", fmt_num(r.get("latency_ms_per_image"), 2), r.get("latency_ms_per_image")),
        ("speed-up", fmt_num(r.get("speedup"), 2), r.get("speedup")),
        ("steps", _steps_text(r), r.get("num_steps")),
        ("fine-tune, all experts (steps x batch)", ft_text, None),
        ("search/routing cost", cost_text, None),
    ]


def _steps_text(r: Mapping[str, Any]) -> str:
    """``6`` (evenly spaced steps), or ``6 (2+3+1)``: the steps per interval of a row sampled
    along its own schedule (highest-noise interval last, as the intervals are listed)."""
    n = r.get("num_steps")
    text = str(n) if n is not None else "-"
    per = r.get("steps_per_interval")
    return f"{text} ({'+'.join(str(int(s)) for s in per)})" if per else text


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
        own = ("; rows with steps per interval, e.g. 4 (1+3), sample along their allocation's own step schedule"
               if any(r.get("steps_per_interval") for r in summary["rows"]) else "")
        lines.append(
            f"Sampler {s.get('sampler')} with {s.get('num_steps')} steps for every method (base, fewer steps: fewer"
            f"{own}); MACs counted with fvcore (attention included) per call at batch 1, summed over the trajectory."
        )
        lines.append(
            f"Latency: wall time of a whole trajectory at batch {s.get('latency_batch_size')} divided by the batch, "
            f"median of {s.get('latency_repeats')} runs, timed round-robin with the base model in the same run "
            f"(device {s.get('device')}); speed-up = base latency / method latency from that same run."
        )
    guided = sorted({float(r["guidance_scale"]) for r in summary["rows"] if r.get("guidance_scale") is not None})
    text = any((r.get("macs_parts") or {}).get("text_encoder") for r in summary["rows"])
    if guided and text:
        lines.append(
            f"Text-to-image: image i asks for the prompt of class i % C (e.g. \"a handwritten seven\"), "
            f"classifier-free guidance scale {', '.join(f'{g:g}' for g in guided)} with the empty prompt as the "
            "unconditional half; a guided step costs two UNet passes, both in the MACs, and the text encoder runs for "
            "the prompt and the empty prompt (macs_parts); prompt acc = how often the digit classifier recognises "
            "the prompted digit (all seeds)."
        )
    elif guided:
        lines.append(
            f"Class-conditional: image i asks for class i % C, classifier-free guidance scale "
            f"{', '.join(f'{g:g}' for g in guided)}; a guided step costs two UNet passes (null class + class), both in "
            "the MACs; class acc = how often the digit classifier recognises the requested class (all seeds)."
        )
    ft = s.get("finetune")
    if ft:
        lines.append(
            f"Equal fine-tuning budget for every pruned method: {ft.get('steps_per_expert')} steps x "
            f"{ft.get('batch_size')} images per expert ({ft.get('images_total')} images in all per method; "
            f"the static model gets all of them)."
        )
        val = next((r["finetune"]["validation"] for r in summary["rows"]
                    if isinstance(r.get("finetune"), dict) and r["finetune"].get("validation")), None)
        if val:
            lines.append(
                f"A fine-tuned mixture is kept only if its FID on {val['images']} validation images (seed "
                f"{val['seed']}, noise no scored row uses) beats its untuned experts'; else the untuned mixture is "
                "scored (bench.finetune_validation_images; the fine-tune column says which)."
            )
    ref = summary["reference_point"]
    lines.append(
        f"Hypervolume reference point: MACs ratio {ref['macs_ratio']:g}, FID {fmt_num(ref['fid'], 3)} "
        f"({ref['rule']})."
    )
    return lines


def render_markdown(summary: Mapping[str, Any], search: Any, pareto: Path, search_png: Path | None,
              sim_png: Path | None, alloc_png: Path | None, grids: Sequence[tuple[Mapping[str, Any], Path]],
              config_text: str | None, anytime_png: Path | None = None, latency_png: Path | None = None,
              guidance_grids: Sequence[tuple[Mapping[str, Any], Path]] = ()) -> str:
    """``report.md``: the setup, hypervolumes, one table per budget, skips, search trials,
    intervals, allocations, sample grids, machine and config; figures linked as PNG files."""
    out = [f"# Benchmark report: run `{summary['run']}`", "", "## Which one to ship", ""]
    out += _verdict_md(summary)
    out += ["", "## Setup", ""]
    out += [f"- {line}" for line in _setup_lines(summary)]
    out += ["", "## Quality vs MACs (Pareto fronts)", "", "![pareto](pareto.png)", "",
            "_Interactive version (hover a point for its allocation): `index.html` beside this file._", "",
            "| method | points | Pareto points | hypervolume |", "|---|---|---|---|"]
    for m, v in summary["methods"].items():
        out.append(f"| {method_label(m)} | {len(v['points'])} | {len(v['pareto'])} | "
                   f"{fmt_num(v['hypervolume'], 4)} |")
    out += ["", "## Quality vs measured latency", ""] + latency_md(summary.get("latency_fronts"), latency_png)
    for b in summary["budgets"]:
        out += ["", f"## Budget {b}", "", _md_table(_table_rows(summary, b))]
    out += guidance_md(summary.get("guidance"), guidance_grids)
    out += ["", "## Any-time: routed vs searched at equal cost", ""] + _anytime_md(summary, anytime_png)
    if summary["skipped"]:
        out += ["", "## Methods not run", ""]
        out += [f"- {s['method']} at {budget_key(s['budget_ratio'])}: {s['reason']}" for s in summary["skipped"]]
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
        out += [f"**{method_label(r['method'])}, budget {budget_key(r['budget_ratio'])}** "
                f"(FID {fmt_num(r.get('fid_mean'))})", "", f"![{r['method']}]({g.parent.name}/{g.name})", ""]
    if not grids:
        out += ["_no sample grids stored_"]
    out += ["", "## Machine and versions", ""]
    out += [f"- {k}: {v}" for k, v in _versions_text(summary)] or ["_not recorded_"]
    out += ["", "## Config", "", "```yaml", (config_text or "(config.yaml not found)").rstrip(), "```", ""]
    return "\n".join(out)


def _anytime_lines(summary: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """The section's note and ``(budget, verdict line)`` pairs (none when it is left out)."""
    a = summary.get("anytime") or {}
    if not a.get("available"):
        return f"Left out: {a.get('note') or 'no any-time data'}.", []
    return a["note"] + ".", [(b, v["verdict"]) for b, v in a["budgets"].items()]


def _anytime_md(summary: Mapping[str, Any], png: Path | None) -> list[str]:
    note, lines = _anytime_lines(summary)
    if not lines:
        return [f"_{note}_"]
    out = [f"- budget {b}: **{text}**" for b, text in lines] + ["", note]
    if png is not None:
        out += ["", "![any-time](anytime.png)"]
    return out


def _anytime_html(summary: Mapping[str, Any], png: Path | None) -> str:
    note, lines = _anytime_lines(summary)
    head = '<h2 id="anytime">Any-time: routed vs searched at equal cost</h2>'
    if not lines:
        return head + f'<p class="note">{_esc(note)}</p>'
    items = "".join(f'<li data-budget="{_esc(b)}"><strong>budget {_esc(b)}: {_esc(t)}</strong></li>' for b, t in lines)
    return head + f'<ul class="anytime">{items}</ul><p class="note">{_esc(note)}</p>' + (
        _img(png, "any-time curves") if png is not None else "")


def _img(path: Path, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{_b64(path)}">'


def _verdict_md(summary: Mapping[str, Any]) -> list[str]:
    out = []
    for v in summary.get("verdicts") or []:
        out.append(f"- **{v['text']}**" if not v["baseline_wins"] else f"- **{v['text']}** (a baseline wins here)")
        if v["export_command"]:
            out.append(f"  `{v['export_command']}`")
    return out or ["_no budgeted rows to decide from_"]


def _verdict_html(summary: Mapping[str, Any]) -> str:
    items = []
    for v in summary.get("verdicts") or []:
        cmd = f"<br><code>{_esc(v['export_command'])}</code>" if v["export_command"] else ""
        items.append(f'<li data-budget="{_esc(v["budget"])}" data-ship="{_esc(v["ship"]["method"])}" '
                     f'data-baseline-wins="{str(v["baseline_wins"]).lower()}"><strong>{_esc(v["text"])}</strong>{cmd}</li>')
    body = "".join(items) or "<li><em>no budgeted rows to decide from</em></li>"
    return f'<h2 id="verdict">Which one to ship</h2><ul class="verdicts">{body}</ul>'


def render_html(summary: Mapping[str, Any], search: Any, pareto: Path, search_png: Path | None, sim_png: Path | None,
          alloc_png: Path | None, grids: Sequence[tuple[Mapping[str, Any], Path]], config_text: str | None,
          interactive: str | None = None, anytime_png: Path | None = None, latency_png: Path | None = None,
          guidance_grids: Sequence[tuple[Mapping[str, Any], Path]] = ()) -> str:
    """``index.html``: what :func:`render_markdown` writes, self-contained (figures inline as base64
    PNGs, the interactive Pareto plot's plotly.js inline), with machine-readable ``data-value``
    cells."""
    p = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>diffnas report: {_esc(summary['run'])}"
         f"</title><style>{_CSS}</style></head><body>", f"<h1>Benchmark report: run <code>{_esc(summary['run'])}</code></h1>",
         _verdict_html(summary), "<h2 id=\"setup\">Setup</h2>",
         "<ul>" + "".join(f"<li>{_esc(line)}</li>" for line in _setup_lines(summary)) + "</ul>",
         "<h2 id=\"pareto\">Quality vs MACs (Pareto fronts)</h2>",
         interactive if interactive is not None else
         "<p class=\"note\">plotly is not installed: no interactive plot (pip install plotly)</p>",
         _img(pareto, "Pareto fronts"),
         "<table class=\"hypervolume\"><tr><th>method</th><th>points</th><th>Pareto points</th><th>hypervolume</th></tr>"]
    for m, v in summary["methods"].items():
        p.append(f'<tr data-method="{_esc(m)}"><td>{_esc(method_label(m))}</td><td>{len(v["points"])}</td>'
                 f'<td>{len(v["pareto"])}</td><td data-value="{_esc(json.dumps(v["hypervolume"]))}">'
                 f'{_esc(fmt_num(v["hypervolume"], 4))}</td></tr>')
    p.append("</table>")
    p.append(latency_html(summary.get("latency_fronts"), _img(latency_png, "latency fronts") if latency_png else ""))
    for b in summary["budgets"]:
        p += [f'<h2 id="budget-{_esc(b)}">Budget {_esc(b)}</h2>', _html_table(_table_rows(summary, b), b)]
    p.append(guidance_html(summary.get("guidance"), guidance_grids, _img))
    p.append(_anytime_html(summary, anytime_png))
    if summary["skipped"]:
        p += ["<h2>Methods not run</h2><ul>"] + [
            f"<li>{_esc(s['method'])} at {_esc(budget_key(s['budget_ratio']))}: {_esc(s['reason'])}</li>"
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
        cap = f"{method_label(r['method'])}, budget {budget_key(r['budget_ratio'])} (FID {fmt_num(r.get('fid_mean'))})"
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
