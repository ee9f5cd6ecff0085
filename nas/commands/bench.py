"""``diffnas bench`` (the comparison at equal MACs and equal fine-tuning cost) and ``diffnas report``.

Thin: resolve the config, call :func:`benchmarks.bench.run_bench` or
:func:`benchmarks.report.build_report`, print a summary. ``benchmarks`` sits above ``nas`` in the
package order; it is imported inside the command functions only (the CLI is the one place that
reaches up to it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nas.commands import register
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["bench_command", "report_command"]


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-report", action="store_true", help="do not rebuild report/ after the benchmark")


@register(
    "bench",
    "compare routed, searched, uniform, static pruning and the base model at each MACs budget",
    arguments=_bench_arguments,
    description="For each budget in bench.budgets (fractions of the base model's trajectory MACs): the routed "
    "(allocations/router-<b>.json) and searched (allocations/search-<b>.json) mixtures, every expert at one "
    "uniform width, one model statically pruned with torch-pruning, and the base model with fewer steps; plus "
    "the base model once. Pruned methods get the same fine-tuning budget (experts.finetune_*). FID/KID mean and "
    "95%% interval over bench.seeds, fvcore trajectory MACs, latency and speed-up timed side by side with the base "
    "model. Rows are appended to results.jsonl as they finish; a rerun skips finished rows. Methods whose inputs "
    "are missing are skipped with the reason. Then the report is rebuilt (runs/<name>/report/).",
)
def bench_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from benchmarks.bench import format_bench, run_bench
    from nas.commands.base import prepare_run
    from nas.device import resolve_device

    device = resolve_device(cfg.device)
    run = prepare_run(cfg)
    result = run_bench(cfg, run, device)
    sys.stdout.write(format_bench(result))
    sys.stdout.write(f"{len(result.rows)} rows appended to {run.results_path} in {result.wall_s:.1f} s\n")
    if not getattr(args, "no_report", False):
        from benchmarks.report import build_report

        rep = build_report(run.path)
        sys.stdout.write(f"report: {rep.index_html}\n")
    return 0


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="run directory (default: <run_root>/<name> of the config)")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default RUN_DIR/report)")


@register(
    "report",
    "build the Pareto-front report of a run from its stored results (no model is run)",
    arguments=_report_arguments,
    description="Read RUN_DIR/results.jsonl (benchmark rows, search trials), allocations/*.json, intervals.json, "
    "similarity.png and the sample grids, and write RUN_DIR/report/: index.html (self-contained), report.md, "
    "PNG figures and summary.json (schema in benchmarks/report/__init__.py). The same inputs give the same files.",
)
def report_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from benchmarks.report import build_report

    path = Path(args.run_dir) if args.run_dir else RunDir.from_config(cfg).path
    if not path.is_dir():
        raise UserError(f"run directory {str(path)!r} does not exist")
    rep = build_report(path, out_dir=args.out)
    s = rep.summary
    sys.stdout.write(f"{len(s['rows'])} benchmark rows, {len(s['methods'])} methods, "
                     f"{len(s['budgets'])} budgets, {len(rep.pngs)} figures\n")
    for m, v in s["methods"].items():
        sys.stdout.write(f"  {m:<11} hypervolume {v['hypervolume']:.4f} ({len(v['pareto'])} Pareto points)\n")
    sys.stdout.write(f"report: {rep.index_html}\n")
    return 0
