"""``diffnas train-experts`` and ``diffnas finetune``: the interval experts and their pruned
mixtures (see :mod:`nas.experts_stage`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from nas.commands import register
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.experts_stage import finetune_run, train_run_experts
from nas.run import RunContext, read_intervals

__all__ = ["finetune_command", "train_experts_command"]


def _arguments_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expert", type=int, action="append", metavar="K", default=None,
                        help="train only expert K (repeatable; e.g. to split the experts over machines)")
    parser.add_argument("--parallel", action="store_true",
                        help="train the experts as one Ray task each (same as --set experts.parallel=true)")
    parser.add_argument("--address", metavar="ADDR",
                        help="with --parallel: join a running Ray cluster, 'auto' or host:port (same as "
                        "--set search.address=...); default: start a local Ray")


def _experts_config(cfg: ExperimentConfig, args: argparse.Namespace) -> ExperimentConfig:
    """``--parallel`` and ``--address`` applied to the config."""
    if args.address is not None and not (args.parallel or cfg.experts.parallel):
        raise UserError("--address needs --parallel (or experts.parallel=true): the sequential path uses no Ray")
    try:
        if args.parallel:
            cfg = dataclasses.replace(cfg, experts=dataclasses.replace(cfg.experts, parallel=True))
        if args.address is not None:
            cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, address=args.address))
    except UserError as err:
        raise UserError(f"train-experts option: {err}") from None
    return cfg


@register(
    "train-experts",
    "train one elastic expert per interval (sandwich rule + distillation), resumable",
    arguments=_arguments_train,
    description="Read runs/<name>/intervals.json (from `diffnas intervals`), wrap the base UNet in the "
    "elastic supernet of space.* (channels ordered by importance once), and fine-tune one copy per "
    "interval on that interval's timesteps only: every step trains the full arch, the smallest arch and "
    "experts.random_archs random archs on the same batch (denoising loss + experts.distill_weight x MSE "
    "to the frozen base model). Checkpoints every experts.checkpoint_every steps; a rerun resumes. "
    "Writes runs/<name>/experts/expert_<k>/ and the held-out table experts/table.md. With --parallel "
    "(experts.parallel) every expert is one Ray task (experts.cpus_per_task, experts.gpus_per_task, "
    "experts.max_retries) on a local Ray or the cluster of --address; a task whose worker dies is retried "
    "and resumes from its checkpoint; experts/ray_jobs.json records where each ran.",
)
def train_experts_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    cfg = _experts_config(cfg, args)
    ctx = RunContext(cfg)
    read_intervals(ctx.run)  # before anything is written
    ctx.prepare()
    outcome = train_run_experts(ctx, only=args.expert)
    sys.stdout.write("".join(line + "\n" for line in outcome.lines()))
    return 0


def _arguments_finetune(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allocation", required=True, metavar="PATH",
                        help="allocation JSON (runs/<name>/allocations/<method>-<budget>.json)")
    parser.add_argument("--out", metavar="DIR", help="mixture folder (default runs/<name>/mixtures/<method>-<budget>)")
    parser.add_argument("--from-base", action="store_true",
                        help="prune the base model's supernet instead of the experts (static-pruning baseline)")


@register(
    "finetune",
    "materialise the experts of an allocation and fine-tune them at a fixed budget",
    arguments=_arguments_finetune,
    description="For each interval, physically prune its expert to the allocation's arch and fine-tune it "
    "on the interval's timesteps (same loss as train-experts) for experts.finetune_steps steps of "
    "experts.finetune_batch_size images: the same budget for every allocation method. Saves a mixture "
    "pipeline folder (MixturePipeline.from_pretrained loads it; `diffnas sample/evaluate --model DIR` use it).",
)
def finetune_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from experts.allocation import Allocation

    path = Path(args.allocation)
    if not path.is_file():
        raise UserError(f"allocation {path} does not exist")
    try:
        allocation = Allocation.load(path)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read allocation {path}: {exc}") from exc
    ctx = RunContext(cfg)
    if not args.from_base and not ctx.has_experts():
        raise UserError(f"{ctx.run.experts_dir} has no trained experts; run `diffnas train-experts` first "
                        "(or pass --from-base to prune the base model)")
    ctx.prepare()
    outcome = finetune_run(ctx, allocation, out=Path(args.out) if args.out else None, from_base=args.from_base)
    sys.stdout.write("".join(line + "\n" for line in outcome.lines()))
    return 0
