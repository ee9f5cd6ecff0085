"""Subcommands on the base model: ``config``, ``train-base``, ``sample``, ``evaluate``.

Each is thin: resolve the config, write it to ``runs/<name>/config.yaml``, call the library
(:mod:`nas.models`, :mod:`nas.evaluation`). Heavy imports happen inside the library functions so
``--help`` is quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from nas.commands import register
from nas.config import ExperimentConfig, config_to_yaml
from nas.evaluation import check_model_arg, evaluate_base, format_table, sample_base
from nas.models import check_base_config
from nas.run import RunContext

__all__ = ["config_command", "evaluate", "sample", "train_base"]


@register("config", "print the resolved config as YAML (defaults < preset < --config < --set)")
def config_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    sys.stdout.write(config_to_yaml(cfg))
    return 0


@register(
    "train-base",
    "train the embedded base model (or reuse it), or check that a hub id / local model loads",
    description="Train the embedded base model once (resumable; reused afterwards), or load a "
    "diffusers hub id / local folder given by model.base, and report what was loaded. "
    "Writes runs/<name>/config.yaml and runs/<name>/base/.",
)
def train_base(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    check_base_config(cfg)  # before anything is written
    ctx = RunContext(cfg)
    ctx.prepare()
    base = ctx.base
    n_params = sum(p.numel() for p in base.unet.parameters())
    where = base.path if base.path is not None else base.source
    sys.stdout.write(
        f"base model: {base.source} ({type(base.unet).__name__}, {n_params / 1e6:.2f}M parameters, "
        f"sample shape {tuple(base.sample_shape)}{', latent' if base.vae is not None else ''}) at {where}\n"
    )
    return 0


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="PNG", help="where to write the grid (default runs/<name>/samples/...)")
    parser.add_argument("--nrow", type=int, default=None, help="images per grid row (default: square)")
    _model_argument(parser)


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", metavar="DIR", default=None,
        help="use this model folder instead of the base model: a mixture (runs/<name>/mixtures/<method>-<budget>), "
        "a mixture folder, a supernet or a (pruned) UNet folder; the base model still gives the noise schedule",
    )


@register(
    "sample",
    "sample images from the base model into a PNG grid",
    arguments=_sample_arguments,
    description="Sample sampling.num_images images with sampling.sampler in sampling.num_steps steps "
    "(seeded by sampling.seed) and write a PNG grid to runs/<name>/samples/.",
)
def sample(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    check_base_config(cfg)  # before anything is written
    if getattr(args, "model", None) is not None:
        check_model_arg(args.model)
    ctx = RunContext(cfg)
    ctx.prepare()
    path = sample_base(ctx, out=Path(args.out) if args.out else None, nrow=args.nrow,
                       model=getattr(args, "model", None))
    sys.stdout.write(f"wrote {cfg.sampling.num_images} samples to {path}\n")
    return 0


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compare-untrained",
        action="store_true",
        default=None,
        help="also score an untrained model of the same shape (same as --set evaluation.compare_untrained=true)",
    )
    _model_argument(parser)


@register(
    "evaluate",
    "FID/KID, MACs per call and per trajectory, and latency per image of the base model",
    arguments=_evaluate_arguments,
    description="Generate evaluation.num_samples images per seed in evaluation.seeds, score them "
    "against the data with clean-fid (FID and KID; the digit classifier's features for the digits "
    "data, Inception otherwise), count MACs, measure latency, print a table and append one record "
    "per model to runs/<name>/results.jsonl.",
)
def evaluate(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    if args.compare_untrained:
        cfg = dataclasses.replace(cfg, evaluation=dataclasses.replace(cfg.evaluation, compare_untrained=True))
    check_base_config(cfg)  # before anything is written
    if getattr(args, "model", None) is not None:
        check_model_arg(args.model)
    ctx = RunContext(cfg)
    run = ctx.prepare()
    rows = evaluate_base(ctx, model=getattr(args, "model", None))
    first = rows[0]
    sys.stdout.write(
        f"{first.sampler}, {first.num_steps} steps, {first.extractor} features, device {first.device}; "
        f"results appended to {run.results_path}\n"
    )
    sys.stdout.write(format_table(rows) + "\n")
    return 0
