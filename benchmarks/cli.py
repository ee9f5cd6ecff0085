"""The benchmarks' commands and stages, registered with ``nas``'s registries by :func:`register_cli`
(called from the ``diffnas.plugins`` entry point, :mod:`benchmarks.plugin`).

- ``diffnas bench``: the comparison at equal MACs and equal fine-tuning cost
  (:func:`benchmarks.bench.run_bench`), then the report;
- ``diffnas report``: the report of a run from its stored results
  (:func:`benchmarks.report.build_report`);
- the stages ``finetune`` (make every pruned model the benchmark evaluates), ``bench`` and
  ``report`` of ``diffnas run``, after the method's own stages.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nas.commands import register
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run import RunContext, RunDir, Stage, register_stage

log = logging.getLogger(__name__)

__all__ = ["BENCH_STAGES", "bench_command", "register_cli", "report_command"]

BENCH_HELP = "compare the router, search, uniform, static and fewer_steps allocations with the base model at each MACs budget"
BENCH_DESCRIPTION = (
    "For each budget in bench.budgets (fractions of the base model's trajectory MACs): the router's "
    "(allocations/router-<b>.json) and the search's (allocations/search-<b>.json) mixtures, every expert at one "
    "uniform width, one model statically pruned with torch-pruning, and the base model with fewer steps; plus "
    "the base model once. Pruned methods get the same fine-tuning budget (experts.finetune_*). FID/KID mean and "
    "95%% interval over bench.seeds, fvcore trajectory MACs, latency and speed-up timed side by side with the base "
    "model. Rows are appended to results.jsonl as they finish; a rerun skips finished rows. Methods whose inputs "
    "are missing are skipped with the reason. Then the report is rebuilt (runs/<name>/report/)."
)
REPORT_HELP = "build the Pareto-front report of a run from its stored results (no model is run)"
REPORT_DESCRIPTION = (
    "Read RUN_DIR/results.jsonl (benchmark rows, search trials), allocations/*.json, intervals.json, "
    "similarity.png and the sample grids, and write RUN_DIR/report/: index.html (self-contained), report.md, "
    "PNG figures and summary.json (schema in benchmarks/report/__init__.py). The same inputs give the same files."
)


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-report", action="store_true", help="do not rebuild report/ after the benchmark")


def bench_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from benchmarks.bench import format_bench, run_bench
    from benchmarks.report import build_report
    from nas.models import require_trained_base

    require_trained_base(cfg, RunDir.from_config(cfg).path, "bench")  # never trains a base model as a side effect
    ctx = RunContext(cfg)
    run = ctx.prepare()
    result = run_bench(cfg, run, ctx.device)
    sys.stdout.write(format_bench(result))
    sys.stdout.write(f"{len(result.rows)} rows appended to {run.results_path} in {result.wall_s:.1f} s\n")
    if not getattr(args, "no_report", False):
        rep = build_report(run.path)
        sys.stdout.write(f"report: {rep.index_html}\n")
    return 0


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="run directory (default: <run_root>/<name> of the config)")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default RUN_DIR/report)")
    parser.add_argument("--force", action="store_true",
                        help="write into an output folder that holds files the report did not write (they are kept)")


def report_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from benchmarks.report import build_report

    path = Path(args.run_dir) if args.run_dir else RunDir.from_config(cfg).path
    if not path.is_dir():
        raise UserError(f"run directory {str(path)!r} does not exist")
    rep = build_report(path, out_dir=args.out, force=bool(getattr(args, "force", False)))
    s = rep.summary
    sys.stdout.write(f"{len(s['rows'])} benchmark rows, {len(s['methods'])} methods, "
                     f"{len(s['budgets'])} budgets, {len(rep.pngs)} figures\n")
    for m, v in s["methods"].items():
        sys.stdout.write(f"  {m:<11} hypervolume {v['hypervolume']:.4f} ({len(v['pareto'])} Pareto points)\n")
    for v in s.get("verdicts") or []:
        sys.stdout.write(f"{v['text']}\n" + (f"  {v['export_command']}\n" if v["export_command"] else ""))
    sys.stdout.write(f"report: {rep.index_html}\n")
    return 0


def _finetune_stage(ctx: RunContext) -> str:
    from benchmarks.bench import prepare_models

    res = prepare_models(ctx.cfg, ctx.run, ctx.device, progress=ctx.progress)
    return f"models ready in {ctx.run.mixtures_dir}" + (f"; {len(res.skipped)} skipped" if res.skipped else "")


def _bench_stage(ctx: RunContext) -> str:
    from benchmarks.bench import run_bench

    res = run_bench(ctx.cfg, ctx.run, ctx.device, progress=ctx.progress)
    return (f"{len(res.rows)} rows measured, {len(res.reused)} kept from before"
            + (f", {len(res.skipped)} skipped (see report)" if res.skipped else ""))


def _report_stage(ctx: RunContext) -> str:
    from benchmarks.report import build_report

    return f"{build_report(ctx.run.path).index_html}"


#: The benchmarks' stages of ``diffnas run``, after the method's (positions 10 to 50).
BENCH_STAGES: tuple[Stage, ...] = (
    Stage("finetune", "fine-tune every pruned model at equal cost", ("bench",), _finetune_stage,
          lambda ctx: [ctx.run.mixtures_dir], 60),
    Stage("bench", "FID/KID, MACs and latency of every method", (), _bench_stage,
          lambda ctx: [ctx.run.results_path], 70),
    Stage("report", "Pareto fronts, tables and plots", (), _report_stage,
          lambda ctx: [ctx.run.report_dir / "index.html", ctx.run.report_dir / "summary.json"], 80),
)


def register_cli() -> None:
    """Register the ``bench`` and ``report`` commands and the :data:`BENCH_STAGES`."""
    register("bench", BENCH_HELP, arguments=_bench_arguments, description=BENCH_DESCRIPTION)(bench_command)
    register("report", REPORT_HELP, arguments=_report_arguments, description=REPORT_DESCRIPTION)(report_command)
    for stage in BENCH_STAGES:
        register_stage(stage)
