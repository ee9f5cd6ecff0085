"""The benchmarks' commands and stages, registered with ``nas``'s registries by :func:`register_cli`
(called from the ``diffnas.plugins`` entry point, :mod:`benchmarks.plugin`).

- ``diffnas bench``: the comparison at equal MACs and equal fine-tuning cost
  (:func:`benchmarks.bench.run_bench`), then the report;
- ``diffnas report``: the report of a run from its stored results
  (:func:`benchmarks.report.build_report`);
- ``diffnas export``: one benchmarked model as a diffusers pipeline folder with a model card
  (:func:`benchmarks.export.export_pipeline`);
- the stages ``finetune`` (make every pruned model the benchmark evaluates), ``bench`` and
  ``report`` of ``diffnas run``, after the method's own stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from nas.commands import register
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run import RunContext, RunDir, Stage, register_stage

log = logging.getLogger(__name__)

__all__ = ["BENCH_STAGES", "bench_command", "export_command", "register_cli", "report_command"]

BENCH_HELP = "compare the router, search, uniform, static and fewer_steps allocations with the base model at each MACs budget"
BENCH_DESCRIPTION = (
    "For each budget in bench.budgets (fractions of the base model's trajectory MACs): the router's "
    "(allocations/router-<b>.json) and the search's (allocations/search-<b>.json) mixtures, every expert at one "
    "uniform width, one model statically pruned with torch-pruning, and the base model with fewer steps; plus "
    "the base model once. Pruned methods get the same fine-tuning budget (experts.finetune_*). FID/KID mean and "
    "95%% interval over bench.seeds, fvcore trajectory MACs, latency and speed-up timed side by side with the base "
    "model. Rows are appended to results.jsonl as they finish; a rerun skips finished rows. Methods whose inputs "
    "are missing are skipped with the reason. Then the report is rebuilt (runs/<name>/report/). With --parallel, "
    "the fine-tuning and every (method, budget, seed) sampling job are Ray tasks (local, or --address); each row "
    "is still written once, with the same numbers."
)
REPORT_HELP = "build the Pareto-front report of a run from its stored results (no model is run)"
REPORT_DESCRIPTION = (
    "Read RUN_DIR/results.jsonl (benchmark rows, search trials), allocations/*.json, intervals.json, "
    "similarity.png and the sample grids, and write RUN_DIR/report/: index.html (self-contained), report.md, "
    "PNG figures and summary.json (schema in benchmarks/report/__init__.py). The same inputs give the same files."
)


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-report", action="store_true", help="do not rebuild report/ after the benchmark")
    parser.add_argument("--parallel", action="store_true",
                        help="fine-tune each pruned model and sample each (method, budget, seed) as a Ray task "
                        "(same as --set bench.parallel=true)")
    parser.add_argument("--address", metavar="ADDR",
                        help="with --parallel: join a running Ray cluster, 'auto' or host:port (same as "
                        "--set search.address=...); default: start a local Ray")


def _bench_config(cfg: ExperimentConfig, args: argparse.Namespace) -> ExperimentConfig:
    """``--parallel`` and ``--address`` of ``diffnas bench`` applied to the config."""
    address = getattr(args, "address", None)
    parallel = bool(getattr(args, "parallel", False))
    if address is not None and not (parallel or cfg.bench.parallel):
        raise UserError("--address needs --parallel (or bench.parallel=true): the sequential bench uses no Ray")
    if parallel:
        cfg = dataclasses.replace(cfg, bench=dataclasses.replace(cfg.bench, parallel=True))
    if address is not None:
        cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, address=address))
    return cfg


def bench_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from benchmarks.bench import format_bench, run_bench
    from benchmarks.report import build_report
    from nas.models import require_trained_base

    cfg = _bench_config(cfg, args)
    require_trained_base(cfg, RunDir.from_config(cfg).path, "bench")  # never trains a base model as a side effect
    ctx = RunContext(cfg)
    ctx.check_experts()  # before prepare() writes config.yaml
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


EXPORT_HELP = "write one benchmarked model as a diffusers pipeline folder with a model card (README.md)"
EXPORT_DESCRIPTION = (
    "Pick a benchmarked model of RUN_DIR (--method and --budget, or the lowest FID under --max-macs-ratio and/or "
    "--max-latency-ms, from results.jsonl) and write it to --out (default RUN_DIR/export/<method>-<budget>) as a "
    "folder that loads with MixturePipeline.from_pretrained(folder), with a Hugging Face model card: intervals, "
    "steps and expert size per interval, MACs vs the base, FID/KID with intervals, latency and speed-up, the "
    "config. Only mixtures (router, search, uniform) are pipeline folders. An existing non-empty --out is refused "
    "unless --force."
)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="run directory (default: <run_root>/<name> of the config)")
    parser.add_argument("--method", help="the method to export (router, search, uniform)")
    parser.add_argument("--budget", type=float, help="its budget (fraction of the base model's trajectory MACs)")
    parser.add_argument("--max-macs-ratio", type=float, metavar="R",
                        help="export the lowest-FID model whose MACs ratio is at most R")
    parser.add_argument("--max-latency-ms", type=float, metavar="MS",
                        help="export the lowest-FID model whose benchmarked latency per image is at most MS")
    parser.add_argument("--out", metavar="DIR", help="folder to write (default RUN_DIR/export/<method>-<budget>)")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing non-empty --out (a previous export's files are replaced, "
                             "nothing else is deleted)")


def export_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from benchmarks.export import export_pipeline

    path = Path(args.run_dir) if args.run_dir else RunDir.from_config(cfg).path
    if not path.is_dir():
        raise UserError(f"run directory {str(path)!r} does not exist")
    if (args.method is None) != (args.budget is None):
        raise UserError("--method and --budget go together (e.g. --method router --budget 0.5)")
    if args.method is not None and (args.max_macs_ratio is not None or args.max_latency_ms is not None):
        raise UserError("give either --method/--budget or --max-macs-ratio/--max-latency-ms, not both")
    # the command as the model card records it: no absolute path (the card may live in the run folder)
    parts = ["diffnas export", "RUN_DIR" if path.is_absolute() else path.as_posix()]
    out_text = None if args.out is None else ("OUT" if Path(args.out).is_absolute() else args.out)
    for flag, value in (("--method", args.method), ("--budget", args.budget), ("--max-macs-ratio", args.max_macs_ratio),
                        ("--max-latency-ms", args.max_latency_ms), ("--out", out_text)):
        if value is not None:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    res = export_pipeline(path, args.out, method=args.method, budget=args.budget, max_macs_ratio=args.max_macs_ratio,
                          max_latency_ms=args.max_latency_ms, force=bool(args.force), command=" ".join(parts))
    f = res.facts
    fid = f.get("fid") or {}
    sys.stdout.write(f"exported {res.method} at budget {res.budget_ratio:g}: FID {fid.get('mean', float('nan')):.2f}, "
                     f"MACs ratio {f.get('macs_ratio') or float('nan'):.3f}, speed-up {f.get('speedup') or float('nan'):.2f}x\n")
    sys.stdout.write(f"folder: {res.folder}\n")
    sys.stdout.write(f"load it: MixturePipeline.from_pretrained({str(res.folder)!r})  (from experts.pipeline)\n")
    return 0


def _finetune_stage(ctx: RunContext) -> str:
    from benchmarks.bench import prepare_models

    res = prepare_models(ctx.cfg, ctx.run, ctx.device, progress=ctx.progress)  # bench.parallel: Ray tasks
    where = " (Ray tasks, see mixtures/ray_jobs.json)" if ctx.cfg.bench.parallel else ""
    return f"models ready in {ctx.run.mixtures_dir}{where}" + (f"; {len(res.skipped)} skipped" if res.skipped else "")


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
    """Register the ``bench``, ``report`` and ``export`` commands and the :data:`BENCH_STAGES`."""
    register("bench", BENCH_HELP, arguments=_bench_arguments, description=BENCH_DESCRIPTION)(bench_command)
    register("report", REPORT_HELP, arguments=_report_arguments, description=REPORT_DESCRIPTION)(report_command)
    register("export", EXPORT_HELP, arguments=_export_arguments, description=EXPORT_DESCRIPTION)(export_command)
    for stage in BENCH_STAGES:
        register_stage(stage)
