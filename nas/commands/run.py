"""``diffnas run``: every stage of the method, in order, on one config (see :mod:`nas.pipeline`).
``make demo`` is ``python -m nas run --preset demo``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from nas.commands import register
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run import run_pipeline, stage_names

__all__ = ["cluster_config", "run_command"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    names = stage_names()
    parser.add_argument("--skip", action="append", default=[], metavar="STAGE", choices=names,
                        help=f"leave a stage out (repeatable): {', '.join(names)}")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE", choices=names,
                        help="run a stage even if its outputs are up to date (repeatable)")
    parser.add_argument("--address", metavar="ADDR",
                        help="run every stage that can use a Ray cluster on the one at ADDR ('auto' or host:port): "
                        "the experts (experts.parallel), the router's training (one task), the search's trials, the "
                        "fine-tuning and the bench's sampling (bench.parallel); same as --set search.address=ADDR --set search.backend=ray "
                        "--set experts.parallel=true --set bench.parallel=true. The run folder must be on storage every "
                        "node sees")


def cluster_config(cfg: ExperimentConfig, address: str | None) -> ExperimentConfig:
    """``cfg`` with every stage that can use a cluster on the one at ``address`` (unchanged for None).

    Example:
        >>> from nas.config import ExperimentConfig
        >>> c = cluster_config(ExperimentConfig(), "auto")
        >>> (c.search.address, c.experts.parallel, c.bench.parallel)
        ('auto', True, True)
    """
    if address is None:
        return cfg
    try:
        return dataclasses.replace(
            cfg, search=dataclasses.replace(cfg.search, address=address, backend="ray"),
            experts=dataclasses.replace(cfg.experts, parallel=True),
            bench=dataclasses.replace(cfg.bench, parallel=True))
    except UserError as err:
        raise UserError(f"run option --address: {err}") from None


def _show(i: int, total: int, stage: str, status: str) -> None:
    if status in ("running",):
        sys.stdout.write(f"[{i}/{total}] {stage} ...\n")
    elif status in ("up to date", "skipped"):
        sys.stdout.write(f"[{i}/{total}] {stage}: {status}\n")
    sys.stdout.flush()


@register(
    "run",
    "run every stage in order (base, intervals, experts, router, search, fine-tune, bench, report)",
    arguments=_arguments,
    description="Run the whole method on one config: every registered stage in order. A stage whose outputs "
    "already exist for the same config is skipped (runs/<name>/pipeline.json records what ran); every stage "
    "resumes its own partial work. Ends by printing where the report is. `make demo` runs it with the demo preset. "
    "With --address every stage that can use a Ray cluster runs its jobs there (experts, the router, search trials, "
    "fine-tuning, bench sampling), each job's node and device recorded in the run folder.",
)
def run_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    cfg = cluster_config(cfg, getattr(args, "address", None))
    result = run_pipeline(cfg, skip=tuple(args.skip or ()), force=tuple(args.force or ()), on_stage=_show)
    sys.stdout.write("stage      status      time\n")
    for o in result.stages:
        sys.stdout.write(f"{o.name:<10} {o.status:<11} {o.wall_s:7.1f} s\n")
    sys.stdout.write(f"total {result.wall_s:.1f} s, run folder {result.run_dir}\n")
    sys.stdout.write(f"report: {result.report}\n" if result.report is not None
                     else "no report was built (the report stage was skipped)\n")
    return 0
