"""The Pareto-front report of a run, built only from what the run stored (``diffnas report RUN_DIR``).

Inputs (all optional except ``results.jsonl``; a missing one leaves its section out with a note):
``results.jsonl`` (``kind: bench`` rows of ``diffnas bench``, ``kind: bench_skip`` reasons,
``kind: search_trial`` rows of ``diffnas search``), ``allocations/*.json``, ``intervals.json``,
``similarity.png``, the sample grids the bench rows point to, ``config.yaml``. Nothing is
re-run: no model is loaded, no image generated. The same inputs give byte-identical outputs.

Before anything is written every input is checked (:mod:`~benchmarks.report.checks`): a
damaged one (a wrong-typed field in ``results.jsonl``, a truncated or overlapping
``intervals.json``, an unreadable allocation) is one line naming the file, and the previous
report stays byte-identical. The report is built in a temporary sibling and renamed into place
(:mod:`~benchmarks.report.output`); an output folder holding files the report did not write is
refused unless ``force``, and nothing the report did not write is ever deleted.

Outputs in ``RUN_DIR/report/``:

- ``index.html``: self-contained (CSS inline, every figure a base64 PNG ``<img>``, the
  interactive Pareto plot with plotly.js inline; no network); at the top, one verdict per
  budget (:mod:`~benchmarks.report.verdict`: which model to ship and its export command);
  a small inline script marks ``<body data-images-loaded="k" data-images-total="n">`` once the
  images have decoded (what the headless-browser test reads);
- ``report.md``: the same tables and figures (linked PNG files);
- ``pareto.png``, ``anytime.png`` (any-time curves, one row per budget, when available),
  ``latency_fronts.png`` (FID vs ms/image, one panel per timed batch size, when the rows have
  them: :mod:`~benchmarks.report.latency_fronts`), ``search_trials.png``, ``allocations.png``,
  ``similarity.png``, ``grids/*.png``;
- ``summary.json``: every number shown, with the schema below.

Which rows are reported: per (method, budget) the latest ``bench`` row whose ``config_key`` is
that of the latest ``bench`` row in the file (rows of other configurations are counted in
``summary.json`` as ``ignored_rows``, never mixed in).

Methods are named, labelled, coloured and ordered as registered in :mod:`nas.methods` (a
method no plugin registers is shown by its name, in gray, after the others).

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
                         allocation_cost, grid, num_steps, model_path} ]  (registry order of methods,
                         then budget)
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
    anytime           {available, note, budgets: {"<budget>": {curves: {method: {method, budget_ratio,
                        offset_evaluations, offset_seconds, evaluations, seconds, best, points:
                        [[evaluations, seconds, best so far], ...], study (searches)}}, compared_with,
                        verdict}}}  (:mod:`~benchmarks.report.anytime`; ``available`` false and a
                        note when no budget has a router curve and a search curve)
    guidance          (text-to-image runs only) bench/guidance/guidance.json as stored: grid prompts and
                        scales, prompt accuracy per guidance scale of the base and the sampled mixtures
                        (:mod:`~benchmarks.report.guidance`)
    latency_fronts    {available, note, machine, batch_sizes, rows_without, fronts: {"<size>": {method:
                        {points: [[ms_per_image, fid_mean, budget_ratio, speedup], ...], pareto: [[...], ...]}}}}
                        (:mod:`~benchmarks.report.latency_fronts`)
    verdicts          [ {budget, ship, base, best_own, best_baseline (each {method, budget_ratio, fid_mean,
                         fid_ci_low, fid_ci_high, macs_ratio, latency_ms_per_image, speedup, num_steps} or
                         null), baseline_wins, overlaps_runner_up, paired_vs_rival ({mean, low, high,
                         num_seeds, confidence, resolved}: the rival's FID minus the shipped row's, seed by
                         seed, or null), export_command (or null), text} ]

Example:
    >>> hypervolume_2d([(0.2, 3.0), (0.5, 2.0), (0.8, 1.0)], (1.0, 4.0))
    1.5
    >>> pareto_indices([(0.2, 3.0), (0.5, 2.0), (0.6, 2.5)])
    [0, 1]

Modules: :mod:`~benchmarks.report.summary` (numbers, reading a run, ``summary.json``),
:mod:`~benchmarks.report.figures` (PNG figures), :mod:`~benchmarks.report.documents`
(``report.md``, ``index.html``); :func:`build_report` here writes them all.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report.anytime import (
    ANYTIME_SEARCH_METHODS,
    anytime_summary,
    best_at,
    router_curve,
    search_curves,
    verdict_text,
)
from benchmarks.report.documents import render_html, render_markdown
from benchmarks.report.guidance import copy_guidance_grids, guidance_summary
from benchmarks.report.figures import plot_allocations, plot_anytime, plot_pareto, plot_search, plot_similarity
from benchmarks.report.interactive import pareto_html
from benchmarks.report.latency_fronts import PNG as LATENCY_PNG
from benchmarks.report.latency_fronts import latency_fronts, plot_latency_fronts
from benchmarks.report.output import check_out_dir, publish, temp_dir
from benchmarks.report.summary import (
    REF_FID_FACTOR,
    REF_MACS_RATIO,
    SCHEMA,
    RunData,
    _select_rows,
    build_summary,
    fmt_ci,
    fmt_num,
    hypervolume_2d,
    load_run,
    method_label,
    pareto_indices,
    reference_point,
    search_summary,
)
from benchmarks.report.verdict import OWN_METHODS, budget_verdicts
from nas.methods import budget_key

log = logging.getLogger(__name__)

__all__ = [
    "ANYTIME_SEARCH_METHODS",
    "REF_FID_FACTOR",
    "REF_MACS_RATIO",
    "OWN_METHODS",
    "ReportResult",
    "SCHEMA",
    "anytime_summary",
    "best_at",
    "build_report",
    "budget_verdicts",
    "build_summary",
    "fmt_ci",
    "fmt_num",
    "hypervolume_2d",
    "load_run",
    "method_label",
    "pareto_indices",
    "reference_point",
    "router_curve",
    "search_curves",
    "verdict_text",
]


@dataclass(frozen=True)
class ReportResult:
    """Files written by :func:`build_report`."""

    report_dir: Path
    index_html: Path
    report_md: Path
    summary_json: Path
    pngs: tuple[Path, ...]
    summary: dict[str, Any]


def _run_text(path: Path) -> str:
    """How the run folder is written in the verdicts' export commands: as given when relative,
    else ``runs/<name>`` for a folder under a ``runs`` root, else ``RUN_DIR`` (no absolute path
    is stored in a run folder)."""
    if not path.is_absolute():
        return path.as_posix()
    return f"runs/{path.name}" if path.parent.name == "runs" else "RUN_DIR"


def _exportable(run: Path) -> Any:
    def check(row: Mapping[str, Any]) -> bool:
        mp = row.get("model_path")
        return bool(mp) and (run / str(mp) / "model_index.json").is_file()

    return check


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, *, force: bool = False) -> ReportResult:
    """Write the report of ``run_dir`` (``report/`` inside it unless ``out_dir``); see the module
    docstring. Only stored files are read.

    Every input is read and checked before anything is written (a damaged one is a one-line
    :class:`~search_spaces.errors.UserError` naming it, and the previous report stays as it
    was); the report is built in a temporary sibling and moved into place. An output folder
    holding files the report did not write is refused unless ``force`` (then the report is
    written beside them; nothing of theirs is deleted).
    """
    data = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else data.path / "report"
    target = check_out_dir(out, force)
    summary = build_summary(data)
    summary["latency_fronts"] = latency_fronts(_select_rows(data.records)[0], summary["machine"])
    summary["verdicts"] = budget_verdicts(summary, _run_text(Path(run_dir)), _exportable(data.path))
    guidance = guidance_summary(data.path, summary["config_key"])  # text-to-image runs: prompts and guidance
    if guidance is not None:
        summary["guidance"] = guidance
    interactive = pareto_html(summary)
    tmp = temp_dir(out)
    try:
        _write_report(data, summary, tmp, interactive)
        publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    pngs = tuple(out / f for f in summary["files"] if f.endswith(".png"))
    log.info("report written to %s (%d figures)", out / "index.html", len(pngs))
    return ReportResult(out, out / "index.html", out / "report.md", out / "summary.json", pngs, summary)


def _write_report(data: RunData, summary: dict[str, Any], out: Path, interactive: str | None) -> None:
    """Every file of the report into ``out`` (an empty folder); sets ``summary["files"]``."""
    pngs: list[Path] = []
    pareto = plot_pareto(summary, out / "pareto.png")
    pngs.append(pareto)

    search, trials = search_summary(data.records)
    search_png = None
    if trials:
        search_png = plot_search(trials, out / "search_trials.png")
        pngs.append(search_png)

    sim_png = _similarity_png(data, summary, out)
    if sim_png is not None:
        pngs.append(sim_png)

    alloc_png = plot_allocations(summary["allocations"], out / "allocations.png") if summary["allocations"] else None
    if alloc_png is not None:
        pngs.append(alloc_png)

    anytime_png = None
    if (summary.get("anytime") or {}).get("available"):
        anytime_png = plot_anytime(summary["anytime"], out / "anytime.png")
        pngs.append(anytime_png)

    latency_png = plot_latency_fronts(summary["latency_fronts"], out / LATENCY_PNG)
    if latency_png is not None:
        pngs.append(latency_png)

    grids = _copy_grids(data, summary, out)
    pngs += [dst for _, dst in grids]
    guidance_grids = copy_guidance_grids(data.path, summary.get("guidance"), out)
    pngs += [dst for _, dst in guidance_grids]

    files = sorted({str(p.relative_to(out)) for p in pngs} | {"index.html", "report.md", "summary.json"})
    summary["files"] = files
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
    md = render_markdown(summary, search, pareto, search_png, sim_png, alloc_png, grids, data.config_text,
                         anytime_png=anytime_png, latency_png=latency_png, guidance_grids=guidance_grids)
    (out / "report.md").write_text(md)
    page = render_html(summary, search, pareto, search_png, sim_png, alloc_png, grids, data.config_text,
                       interactive=interactive, anytime_png=anytime_png, latency_png=latency_png,
                       guidance_grids=guidance_grids)
    (out / "index.html").write_text(page)


def _similarity_png(data: RunData, summary: Mapping[str, Any], out: Path) -> Path | None:
    """``out/similarity.png``: the run's own copied, else drawn from ``intervals.json`` when it
    stores the similarity matrix; ``None`` when neither is there."""
    if data.similarity_png is not None:
        sim_png = out / "similarity.png"
        shutil.copyfile(data.similarity_png, sim_png)
        return sim_png
    if data.similarity is not None and summary["intervals"]:
        matrix, timesteps = data.similarity
        return plot_similarity(summary["intervals"], matrix, timesteps, out / "similarity.png")
    return None


def _copy_grids(data: RunData, summary: Mapping[str, Any], out: Path) -> list[tuple[Mapping[str, Any], Path]]:
    """Copy each reported row's sample grid to ``out/grids/<method>-<budget>.png`` (a missing one is
    logged and left out); returns (row, copied file) pairs in row order."""
    grids: list[tuple[Mapping[str, Any], Path]] = []
    for r in summary["rows"]:
        g = r.get("grid")
        if not g:
            continue
        src = data.path / g
        if not src.is_file():
            log.warning("sample grid %s of %s is missing; left out", src, r["method"])
            continue
        dst = out / "grids" / f"{r['method']}-{budget_key(r['budget_ratio'])}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        grids.append((r, dst))
    return grids
