"""``diffnas intervals``: discover the experts' timestep intervals (see :mod:`nas.intervals`)."""

from __future__ import annotations

import argparse
import sys

from nas.commands import register
from nas.config import ExperimentConfig
from nas.intervals import format_intervals, run_intervals
from nas.run import RunContext

__all__ = ["intervals_command"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="measure the similarity matrix again even if intervals.json has it for these settings")


@register(
    "intervals",
    "discover the experts' timestep intervals (similarity matrix -> contiguous intervals)",
    arguments=_arguments,
    description="Measure the cosine similarity of the base model's denoising-loss gradients "
    "(intervals.measure=gradient; or of an intermediate activation) between intervals.grid_size "
    "training timesteps, using intervals.num_batches fixed seeded batches of intervals.batch_size "
    "images (per batch, then averaged; intervals.aggregate=mean averages the gradients first). "
    "Cost: grid_size x num_batches forward+backward passes (80 with the defaults). The grid "
    "is then split into contiguous intervals by dynamic programming (minimum within-interval "
    "cosine dissimilarity); the number of intervals is intervals.num_intervals, or with 'auto' the "
    "one chosen by intervals.criterion (elbow: explained dissimilarity minus penalty x (k-1)/(G-1); "
    "ch: Calinski-Harabasz) up to intervals.max_intervals. Writes runs/<name>/intervals.json and "
    "runs/<name>/similarity.png; a rerun with the same measurement settings reuses the matrix.",
)
def intervals_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    ctx = RunContext(cfg)
    run = ctx.prepare()
    result, reused = run_intervals(ctx, force=bool(getattr(args, "force", False)))
    s = result.settings
    how = "reused stored matrix" if reused else f"measured in {result.runtime_s:.1f} s"
    sys.stdout.write(
        f"{result.measure} similarity on {len(result.timesteps)} timesteps "
        f"({s.get('num_passes', '?')} passes; {how}): {result.summary()}\n"
    )
    sys.stdout.write(format_intervals(result, cfg.sampling.sampler, cfg.sampling.num_steps) + "\n")
    sys.stdout.write(f"wrote {run.intervals_path} and {run.similarity_path}\n")
    return 0
