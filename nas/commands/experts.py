"""``diffnas train-experts`` and ``diffnas finetune``: the interval experts and their pruned mixtures.

- ``train-experts``: reads ``runs/<name>/intervals.json`` (from ``diffnas intervals``), trains one
  elastic expert per interval (``experts.*`` keys, :class:`nas.config.ExpertsConfig`) into
  ``runs/<name>/experts/``, then writes the held-out table ``experts/table.md`` (+ ``.json``):
  each expert at the smallest arch (and at width 0.5) against the base model pruned to the same
  arch without fine-tuning.
- ``finetune --allocation PATH``: materialises each expert at the allocation's arch, fine-tunes
  it for ``experts.finetune_steps`` x ``experts.finetune_batch_size`` images on its interval and
  saves the mixture pipeline to ``runs/<name>/mixtures/<method>-<budget>/``.

Both split the data once (seeded by ``seed``): ``experts.heldout_fraction`` of the images are
kept out of training and give the fixed held-out set ``experts/heldout.safetensors``
(:class:`experts.losses.HeldOutSet`) that every method is scored on.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.commands import register
from nas.commands.base import load_base, prepare_run
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.rundir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from experts.intervals import Intervals
    from experts.losses import HeldOutSet
    from experts.training import ExpertTrainSettings
    from nas.models import BaseModel

log = logging.getLogger(__name__)

__all__ = ["experts_data", "finetune_settings", "heldout_path", "read_intervals", "space_options",
           "train_settings"]

HELDOUT_FILE = "heldout.safetensors"


def read_intervals(run: RunDir) -> Intervals:
    """The run's ``intervals.json``; a one-line error saying to run ``diffnas intervals`` if missing."""
    from experts.intervals import Intervals

    path = run.intervals_path
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `diffnas intervals` first (same --name/--config)")
    try:
        return Intervals.load(path)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}; run `diffnas intervals --force` to write it again") from exc


def space_options(cfg: ExperimentConfig) -> Any:
    """The supernet's :class:`~search_spaces.SpaceOptions` from ``space.*``."""
    from search_spaces.unet_space import SpaceOptions

    s = cfg.space
    return SpaceOptions(width_fractions=tuple(s.width_fractions), depth=s.depth, heads=s.heads, ffn=s.ffn,
                        attention_depth=s.depth, branch_depth=s.branch_depth)


def train_settings(cfg: ExperimentConfig) -> ExpertTrainSettings:
    """Settings of the elastic stage from ``experts.*`` and ``seed``."""
    from experts.training import ExpertTrainSettings

    e = cfg.experts
    return ExpertTrainSettings(steps=e.train_steps, batch_size=e.batch_size, learning_rate=e.learning_rate,
                               weight_decay=e.weight_decay, random_archs=e.random_archs,
                               distill_weight=e.distill_weight, grad_clip=e.grad_clip,
                               checkpoint_every=e.checkpoint_every, seed=cfg.seed)


def finetune_settings(cfg: ExperimentConfig) -> ExpertTrainSettings:
    """The fixed fine-tuning budget of ``diffnas finetune`` from ``experts.finetune_*``."""
    import dataclasses

    e = cfg.experts
    return dataclasses.replace(train_settings(cfg), steps=e.finetune_steps, batch_size=e.finetune_batch_size,
                               learning_rate=e.finetune_learning_rate, sandwich=False, random_archs=0)


def heldout_path(run: RunDir) -> Path:
    """``runs/<name>/experts/heldout.safetensors``."""
    return run.experts_dir / HELDOUT_FILE


def experts_data(cfg: ExperimentConfig, run: RunDir, base: BaseModel, intervals: Intervals,
                 device: Any) -> tuple[torch.Tensor, HeldOutSet]:
    """Training samples and the fixed held-out set (written once to ``experts/heldout.safetensors``).

    Images are encoded to latents for latent models. The split is a seeded permutation
    (``seed``); ``experts.heldout_fraction`` of the images (at least one) are held out.
    """
    import torch

    from experts.losses import HeldOutSet, make_heldout
    from nas.data import encode_latents, load_dataset

    images = load_dataset(cfg.data)  # (N,C,H,W) in [-1,1]
    if base.vae is not None:
        images = encode_latents(images, base.vae, device=device)  # (N,c,h,w)
    if tuple(images.shape[1:]) != tuple(base.sample_shape):
        raise UserError(
            f"the data gives {tuple(images.shape[1:])} samples but the base UNet denoises "
            f"{tuple(base.sample_shape)}; set data.image_size (and data.dataset) to match model.base"
        )
    e = cfg.experts
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(int(cfg.seed)))
    n_held = max(1, int(round(e.heldout_fraction * images.shape[0]))) if e.heldout_fraction > 0 else 0
    held_imgs = images[perm[:n_held]] if n_held else images
    train = images[perm[n_held:]] if n_held else images
    if train.shape[0] < 1:
        raise UserError(f"experts.heldout_fraction={e.heldout_fraction} leaves no training images")
    path = heldout_path(run)
    heldout = None
    if path.is_file():
        heldout = HeldOutSet.load(path)
        if heldout.intervals != intervals or heldout.n_per_interval != e.heldout_per_interval \
                or heldout.seed != int(cfg.seed) or tuple(heldout.x0[0].shape[1:]) != tuple(images.shape[1:]):
            log.info("%s was made for other intervals/settings; drawing it again", path)
            heldout = None
    if heldout is None:
        heldout = make_heldout(held_imgs, intervals, e.heldout_per_interval, seed=int(cfg.seed))
        heldout.save(path)
    return train, heldout


def _arguments_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expert", type=int, action="append", metavar="K", default=None,
                        help="train only expert K (repeatable; e.g. to split the experts over machines)")


@register(
    "train-experts",
    "train one elastic expert per interval (sandwich rule + distillation), resumable",
    arguments=_arguments_train,
    description="Read runs/<name>/intervals.json (from `diffnas intervals`), wrap the base UNet in the "
    "elastic supernet of space.* (channels ordered by importance once), and fine-tune one copy per "
    "interval on that interval's timesteps only: every step trains the full arch, the smallest arch and "
    "experts.random_archs random archs on the same batch (denoising loss + experts.distill_weight x MSE "
    "to the frozen base model). Checkpoints every experts.checkpoint_every steps; a rerun resumes. "
    "Writes runs/<name>/experts/expert_<k>/ and the held-out table experts/table.md.",
)
def train_experts_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from experts.training import expert_table, format_expert_table, train_experts
    from nas.device import resolve_device
    from nas.rundir import to_jsonable

    run = RunDir.from_config(cfg)
    intervals = read_intervals(run)  # before any slow work
    device = resolve_device(cfg.device)
    run = prepare_run(cfg)
    base = load_base(cfg, run, device)
    train, heldout = experts_data(cfg, run, base, intervals, device)
    ctx = base.encoder_hidden_states
    only = args.expert
    if only is not None:
        bad = [k for k in only if not 0 <= k < intervals.num_intervals]
        if bad:
            raise UserError(f"--expert {bad[0]} is not an interval index (0..{intervals.num_intervals - 1})")
    t0 = time.perf_counter()
    res = train_experts(base.unet, intervals, train, train_settings(cfg), run.experts_dir,
                        scheduler_config=base.scheduler_config, device=device, options=space_options(cfg),
                        importance=cfg.space.importance, encoder_hidden_states=ctx, only=only)
    run.write_config(cfg, run.experts_dir)
    for r in res.experts:
        sys.stdout.write(f"expert {r.k} {list(intervals.spans()[r.k])}: {r.steps} steps, "
                         f"{r.seconds:.1f} s, final training loss {r.final_loss:.4f} -> {r.path}\n")
    if only is not None and any(not (run.experts_dir / f"expert_{k}").is_dir() for k in range(intervals.num_intervals)):
        sys.stdout.write("some experts are not trained yet; the table is written once all are\n")
        return 0
    kw = {"encoder_hidden_states": ctx} if ctx is not None else None
    rows = expert_table(run.experts_dir, heldout, base.scheduler_config, device=device, model_kwargs=kw)
    table = format_expert_table(rows)
    wall = time.perf_counter() - t0
    note = (f"Held-out denoising loss (MSE of the {base.scheduler_config.get('prediction_type', 'epsilon')} "
            f"prediction), {heldout.n_per_interval} (image, noise, timestep) draws per interval, images from the "
            f"held-out {cfg.experts.heldout_fraction:.0%} of the data (seed {heldout.seed}); experts trained "
            f"{cfg.experts.train_steps} steps x {cfg.experts.batch_size} images each.")
    (run.experts_dir / "table.md").write_text(f"# Elastic experts vs the pruned base model\n\n{note}\n\n{table}\n")
    (run.experts_dir / "table.json").write_text(json.dumps(to_jsonable(
        {"rows": [r.to_dict() for r in rows], "train_seconds": [r.seconds for r in res.experts],
         "settings": train_settings(cfg), "intervals": intervals.to_dict()}), indent=2))
    sys.stdout.write(table + "\n")
    sys.stdout.write(f"wrote {run.experts_dir} (table.md, table.json) in {wall:.1f} s\n")
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
    from experts.finetune import finetune_allocation
    from experts.training import build_supernet
    from nas.device import resolve_device
    from nas.sampling import make_scheduler

    path = Path(args.allocation)
    if not path.is_file():
        raise UserError(f"allocation {path} does not exist")
    try:
        allocation = Allocation.load(path)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read allocation {path}: {exc}") from exc
    run = RunDir.from_config(cfg)
    if not args.from_base and not (run.experts_dir / "intervals.json").is_file():
        raise UserError(f"{run.experts_dir} has no trained experts; run `diffnas train-experts` first "
                        "(or pass --from-base to prune the base model)")
    device = resolve_device(cfg.device)
    run = prepare_run(cfg)
    base = load_base(cfg, run, device)
    train, heldout = experts_data(cfg, run, base, allocation.intervals, device)
    if args.from_base:
        experts: Any = build_supernet(base.unet, space_options(cfg), cfg.space.importance)
        teacher = base.unet
    else:
        experts, teacher = run.experts_dir, None
    out = Path(args.out) if args.out else run.mixture_dir(allocation.method + ("-base" if args.from_base else ""),
                                                         allocation.budget_ratio)
    ctx = base.encoder_hidden_states
    res = finetune_allocation(
        allocation, experts, train, finetune_settings(cfg), out, scheduler_config=base.scheduler_config,
        teacher=teacher, device=device, heldout=heldout, vae=base.vae, encoder_hidden_states=ctx,
        sampler_scheduler=make_scheduler(cfg.sampling.sampler, base.scheduler_config),
    )
    run.write_config(cfg, out)
    for k in range(allocation.intervals.num_intervals):
        before = f"{res.loss_before[k]:.4f}" if res.loss_before else "-"
        after = f"{res.loss_after[k]:.4f}" if res.loss_after else "-"
        sys.stdout.write(f"expert {k} {list(allocation.intervals.spans()[k])}: {res.macs_per_expert[k]} MACs/call, "
                         f"held-out loss {before} -> {after}\n")
    sys.stdout.write(f"fine-tuned {res.steps_per_expert} steps x {res.batch_size} images per expert "
                     f"in {res.seconds:.1f} s -> {out}\n")
    return 0
