"""``diffnas run``: the whole pipeline (base model, intervals, experts, router, search, fine-tuning,
benchmark, report) on one config; see :mod:`nas.pipeline`. ``make demo`` is
``python -m nas run --preset demo``."""

from __future__ import annotations

import argparse
import sys

from nas.commands import register
from nas.config import ExperimentConfig
from nas.pipeline import STAGE_NAMES, add_arguments

__all__ = ["run_command"]


@register(
    "run",
    "run every stage in order (base, intervals, experts, router, search, fine-tune, bench, report)",
    arguments=add_arguments,
    description="Run the whole method on one config: " + ", ".join(STAGE_NAMES) + ". A stage whose outputs "
    "already exist for the same config is skipped (runs/<name>/pipeline.json records what ran); every stage "
    "resumes its own partial work. Ends by printing where the report is. `make demo` runs it with the demo preset.",
)
def run_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from nas.pipeline import run_pipeline

    def show(i: int, total: int, stage: str, status: str) -> None:
        if status in ("running",):
            sys.stdout.write(f"[{i}/{total}] {stage} ...\n")
        elif status in ("up to date", "skipped"):
            sys.stdout.write(f"[{i}/{total}] {stage}: {status}\n")
        sys.stdout.flush()

    result = run_pipeline(cfg, skip=tuple(args.skip or ()), force=tuple(args.force or ()), on_stage=show)
    sys.stdout.write("stage      status      time\n")
    for o in result.stages:
        sys.stdout.write(f"{o.name:<10} {o.status:<11} {o.wall_s:7.1f} s\n")
    sys.stdout.write(f"total {result.wall_s:.1f} s, run folder {result.run_dir}\n")
    if result.report is not None:
        sys.stdout.write(f"report: {result.report}\n")
    else:
        sys.stdout.write("no report was built (the report stage was skipped)\n")
    return 0
