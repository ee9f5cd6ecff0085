"""What the stages read from the run folder and the config: the intervals, the experts' settings,
and the data split into training samples and the fixed held-out set."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run._rundir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from experts.intervals import Intervals
    from experts.losses import HeldOutSet
    from experts.training import ExpertTrainSettings
    from nas.models import BaseModel

log = logging.getLogger(__name__)

__all__ = ["HELDOUT_FILE", "experts_data", "finetune_settings", "heldout_path", "read_intervals", "space_options",
           "train_condition", "train_settings"]

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
    held_idx, train_idx = _split(cfg, int(images.shape[0]))
    held_imgs = images[held_idx]
    train = images[train_idx]
    labels = _labels(cfg, base, int(images.shape[0]))  # class-conditional base: (N,), else None
    path = heldout_path(run)
    heldout = None
    if path.is_file():
        heldout = HeldOutSet.load(path)
        if heldout.intervals != intervals or heldout.n_per_interval != e.heldout_per_interval \
                or heldout.seed != int(cfg.seed) or tuple(heldout.x0[0].shape[1:]) != tuple(images.shape[1:]) \
                or (heldout.labels is None) != (labels is None):
            log.info("%s was made for other intervals/settings; drawing it again", path)
            heldout = None
    if heldout is None:
        heldout = make_heldout(held_imgs, intervals, e.heldout_per_interval, seed=int(cfg.seed),
                               **({} if labels is None else {"labels": labels[held_idx]}))
        heldout.save(path)
    return train, heldout


def _split(cfg: ExperimentConfig, num_images: int) -> tuple[Any, Any]:
    """(held-out indices, training indices) of the experts' split: a seeded permutation (``seed``),
    ``experts.heldout_fraction`` held out (all images on both sides when it is 0)."""
    import torch

    e = cfg.experts
    perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(int(cfg.seed)))
    n_held = max(1, int(round(e.heldout_fraction * num_images))) if e.heldout_fraction > 0 else 0
    if n_held and num_images - n_held < 1:
        raise UserError(f"experts.heldout_fraction={e.heldout_fraction} leaves no training images")
    return (perm[:n_held], perm[n_held:]) if n_held else (perm.sort().values, perm.sort().values)


def _labels(cfg: ExperimentConfig, base: BaseModel, num_images: int) -> Any:
    """(N,) class labels of the data for a class-conditional base, else None."""
    from nas.conditions import training_labels

    return training_labels(cfg, base, num_images).get("labels")


def train_condition(cfg: ExperimentConfig, base: BaseModel, split: bool = True) -> dict[str, Any]:
    """For a class-conditional base: ``labels`` of the training images :func:`experts_data`
    returns (same split, same order; every image's with ``split=False``), ``condition_dropout``
    and ``null_label``, as :func:`experts.training.train_experts` and
    :func:`experts.finetune.finetune_allocation` take them; ``{}`` for an unconditional base."""
    from nas.conditions import base_condition, prompt_condition, training_labels
    from nas.data import load_labels

    if base_condition(cfg, base) is None:
        return {}
    # captions only for a text model: a class-conditional model on a folder that also holds caption
    # files counts its images by class sub-folder and must not fail on captions it never reads
    text = getattr(base, "text_encoder", None) is not None or prompt_condition(base.unet) is not None
    n = int(load_labels(cfg.data, captions=text)[0].shape[0])
    cond = training_labels(cfg, base, n)
    if not split:
        return cond
    _, train_idx = _split(cfg, n)
    return {**cond, "labels": cond["labels"][train_idx]}
