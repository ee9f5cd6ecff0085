"""The training loop behind every expert: sandwich-rule steps, checkpoints, exact resume.

:func:`run_training` trains a supernet (or a plain model) on the timesteps of one interval with
:class:`ExpertTrainSettings`, resuming from a checkpoint folder; :mod:`experts.training` (one
elastic expert per interval), :mod:`experts.finetune` and the benchmarks' baselines call it.
The checkpoint folder it resumes from is :mod:`experts.checkpoint`'s. Its pieces
(:func:`prepare_step_inputs`, :func:`resume_training`, :func:`teacher_output`,
:func:`backward_archs`) are public for loops built on the same rules (data-parallel training in
:mod:`experts.data_parallel`, trajectory distillation in :mod:`experts.schedule_distill`).

Example::

    >>> from experts.train_loop import ExpertTrainSettings
    >>> s = ExpertTrainSettings(steps=10, batch_size=4)
    >>> "steps" in s.identity(), s.identity()["batch_size"]
    (False, 4)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from experts.checkpoint import (
    is_supernet,
    jsonable,
    load_checkpoint,
    read_checkpoint_state,
    recover_checkpoint,
    save_checkpoint,
)
from experts.intervals import Intervals
from experts.denoising import batch_model_kwargs, expert_loss, make_batch
from experts.text_condition import call_denoiser
from search_spaces.base import Arch
from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "ExpertTrainSettings",
    "StepInputs",
    "TrainLog",
    "backward_archs",
    "condition_identity",
    "expand_model_kwargs",
    "prepare_step_inputs",
    "resume_training",
    "run_training",
    "sandwich_archs",
    "teacher_output",
]


@dataclass(frozen=True)
class ExpertTrainSettings:
    """How each expert is trained (``experts.*`` keys of the experiment config).

    Attributes:
        steps: optimiser steps per expert.
        batch_size: images per step (every sub-network of a step sees the same batch).
        learning_rate, weight_decay: AdamW.
        random_archs: random sub-networks per step besides the full and the smallest one.
        distill_weight: weight of the distillation loss (MSE to the frozen pretrained model).
        grad_clip: max gradient norm (``None``: no clipping).
        checkpoint_every: steps between checkpoints.
        seed: seeds the batches, timesteps, noise and sampled archs.
        sandwich: ``False`` trains the full arch only (a plain per-interval fine-tuning).
    """

    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    random_archs: int = 2
    distill_weight: float = 1.0
    grad_clip: float | None = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    sandwich: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.random_archs < 0:
            raise ValueError(f"random_archs must be >= 0, got {self.random_archs}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    def identity(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed (all but ``steps``, ``checkpoint_every``)."""
        d = dataclasses.asdict(self)
        d.pop("steps")
        d.pop("checkpoint_every")
        return d


@dataclass(frozen=True)
class TrainLog:
    """What one training call did: final step, per-step losses, seconds (all calls together)."""

    step: int
    losses: tuple[dict[str, float], ...]
    seconds: float

    def mean_loss(self, key: str = "loss", last: int = 20) -> float:
        vals = [r[key] for r in self.losses[-last:] if key in r]
        return float(sum(vals) / len(vals)) if vals else float("nan")


# --------------------------------------------------------------------------------------------
# the training loop (shared with experts.finetune)


def sandwich_archs(space: Any, rng: np.random.Generator, random_archs: int) -> list[Arch]:
    """Full arch, smallest arch, then ``random_archs`` uniformly sampled archs."""
    return [space.full(), space.smallest()] + [space.sample(rng) for _ in range(random_archs)]


def run_training(
    student: nn.Module,
    teacher: nn.Module | None,
    images: torch.Tensor,
    intervals: Intervals,
    k: int,
    settings: ExpertTrainSettings,
    noise_scheduler: Any,
    ckpt_dir: Path,
    identity: Mapping[str, Any],
    *,
    choose_archs: Callable[[np.random.Generator], Sequence[Mapping[str, Any] | None]] | None = None,
    device: str | torch.device = "cpu",
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "expert",
    max_steps_this_call: int | None = None,
    labels: torch.Tensor | None = None,
    condition_dropout: float = 0.0,
    null_label: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainLog:
    """Train ``student`` on interval ``k`` up to ``settings.steps``, resuming from ``ckpt_dir``.

    Args:
        student: a supernet (``choose_archs`` gives the sub-networks of each step) or a plain
            model (``choose_archs`` None: one call per step).
        teacher: frozen model for distillation, or None.
        images: training samples (N, C, H, W) (latents for latent models), kept on the CPU.
        identity: what must match to resume a checkpoint (settings, intervals, base, arch...).
        choose_archs: per step, the archs to evaluate (``None`` entries: leave as is).
        max_steps_this_call: stop after this many steps of this call (time slicing; how the
            tests simulate a kill); the state is checkpointed, and a later call continues.
        labels: (N,) class labels of ``images`` for a class-conditional model: every batch
            passes its images' labels as ``class_labels`` (to the student and the teacher).
        condition_dropout: probability that a label is replaced by ``null_label`` (so the
            expert keeps the unconditional prediction classifier-free guidance needs). With
            ``labels``, the condition (dropout, null label) is part of the checkpoint's
            identity: another dropout is another checkpoint (:func:`condition_identity`).
        on_step: called as ``on_step(k, step)`` after each step, once that step's checkpoint (if
            it is a checkpoint step) is written; for observers and tests (e.g. to pause a task at
            a known step). It must not touch the model or the RNGs; ``None``: nothing is called.

    Returns:
        the log of all steps so far (from the checkpoint and this call).
    """
    from tqdm.auto import tqdm

    ident = jsonable(condition_identity(identity, labels, condition_dropout, null_label))
    inputs = prepare_step_inputs(student, teacher, images, intervals, k, settings, noise_scheduler, choose_archs,
                      torch.device(device), model_kwargs, _Labels(labels, float(condition_dropout), null_label))
    recover_checkpoint(ckpt_dir)
    step, losses, seconds = resume_training(ckpt_dir, ident, student, inputs.opt, inputs.gen, inputs.rng, settings.steps, desc)
    end = settings.steps if max_steps_this_call is None else min(settings.steps, step + int(max_steps_this_call))
    pbar = tqdm(total=settings.steps, initial=step, desc=desc, disable=not progress, dynamic_ncols=True)
    student.train()
    t_start = time.perf_counter()

    def save() -> None:
        state = {"step": step, "identity": ident, "losses": losses,
                 "seconds": seconds + time.perf_counter() - t_start}
        save_checkpoint(ckpt_dir, student, inputs.opt, inputs.gen, inputs.rng, state)

    try:
        while step < end:
            record = _train_step(inputs)
            if not all(math.isfinite(v) for v in record.values()):
                raise FloatingPointError(f"{desc}: non-finite loss at step {step + 1} ({record}); lower the learning rate")
            step += 1
            losses.append({"step": step, **{key: round(v, 6) for key, v in record.items()}})
            pbar.update(1)
            pbar.set_postfix(loss=f"{record['loss']:.4f}")
            if step % settings.checkpoint_every == 0 and step < end:
                save()
            if on_step is not None:
                on_step(k, step)
        save()
    finally:
        pbar.close()
        student.eval()
    return TrainLog(step, tuple(losses), seconds + time.perf_counter() - t_start)


def condition_identity(identity: Mapping[str, Any], labels: torch.Tensor | None, condition_dropout: float,
                       null_label: int | None) -> dict[str, Any]:
    """``identity`` with the class condition of a labelled training run under ``"condition"``
    (``identity`` unchanged without labels: unconditional checkpoints keep their identity).

    Example:
        >>> condition_identity({"lr": 1}, None, 0.0, None)
        {'lr': 1}
        >>> condition_identity({"lr": 1}, torch.tensor([0, 1]), 0.1, 10)["condition"]
        {'dropout': 0.1, 'null_label': 10}
    """
    if labels is None:
        return dict(identity)
    return {**dict(identity), "condition": {"dropout": float(condition_dropout),
                                            "null_label": None if null_label is None else int(null_label)}}


def prepare_step_inputs(student: nn.Module, teacher: nn.Module | None, images: torch.Tensor, intervals: Intervals, k: int,
             settings: ExpertTrainSettings, noise_scheduler: Any,
             choose_archs: Callable[[np.random.Generator], Sequence[Mapping[str, Any] | None]] | None,
             device: torch.device, model_kwargs: Mapping[str, Any] | None,
             labels: "_Labels | None" = None) -> StepInputs:
    """Models on ``device`` (the teacher frozen), AdamW on the trainable parameters, the seeded RNGs."""
    student.to(device)
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(int(settings.seed) * 1_000_003 + int(k))
    rng = np.random.default_rng([int(settings.seed), int(k)])
    if labels is not None and labels.labels is not None and labels.labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have one entry per image: {labels.labels.shape[0]} labels, "
                         f"{images.shape[0]} images")
    return StepInputs(student, teacher, params, opt, gen, rng, images, intervals, k, settings, noise_scheduler,
                       choose_archs, device, model_kwargs, labels or _Labels())


def resume_training(ckpt_dir: Path, ident: Any, student: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
            rng: np.random.Generator, steps: int, desc: str) -> tuple[int, list[dict[str, float]], float]:
    """(step, losses, seconds) of the checkpoint in ``ckpt_dir`` (loaded into the model, optimiser
    and RNGs), or a fresh start without one; UserError if it was made with another identity."""
    if not (ckpt_dir / "state.json").is_file():
        return 0, [], 0.0
    stored = read_checkpoint_state(ckpt_dir).get("identity")
    if stored != ident:
        diff = sorted(key for key in set(stored or {}) | set(ident) if (stored or {}).get(key) != ident.get(key))
        raise UserError(
            f"the checkpoint in {ckpt_dir} was made with other settings ({', '.join(diff)} differ); "
            f"delete {ckpt_dir.parent.parent} (or that checkpoint) to start again, or use another run name"
        )
    state = load_checkpoint(ckpt_dir, student, opt, gen, rng)
    step, losses, seconds = int(state["step"]), list(state.get("losses", [])), float(state.get("seconds", 0.0))
    if step > steps:
        raise UserError(
            f"{ckpt_dir} is already at step {step} > steps={steps}; raise the steps or delete the checkpoint"
        )
    log.info("%s: resuming at step %d of %d", desc, step, steps)
    return step, losses, seconds


@dataclass(frozen=True)
class _Labels:
    """Per-image class labels of the training images and their condition dropout (none: unconditional)."""

    labels: torch.Tensor | None = None
    dropout: float = 0.0
    null_label: int | None = None


@dataclass(frozen=True)
class StepInputs:
    """What every step of one :func:`run_training` call works on."""

    student: nn.Module
    teacher: nn.Module | None
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    gen: torch.Generator
    rng: np.random.Generator
    images: torch.Tensor
    intervals: Intervals
    k: int
    settings: ExpertTrainSettings
    noise_scheduler: Any
    choose_archs: Callable[[np.random.Generator], Sequence[Mapping[str, Any] | None]] | None
    device: torch.device
    model_kwargs: Mapping[str, Any] | None
    labels: _Labels = _Labels()


def _train_step(s: StepInputs) -> dict[str, float]:
    """One optimiser step (draws: the batch from ``gen``, then the archs from ``rng``); returns its losses."""
    batch = make_batch(s.images, s.intervals, s.k, s.settings.batch_size, s.gen, labels=s.labels.labels,
                       condition_dropout=s.labels.dropout, null_label=s.labels.null_label).to(s.device)
    archs = list(s.choose_archs(s.rng)) if s.choose_archs is not None else [None]
    teacher_out = teacher_output(s, batch)
    s.opt.zero_grad(set_to_none=True)
    record = backward_archs(s, archs, batch, teacher_out)
    if s.settings.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(s.params, s.settings.grad_clip)
    s.opt.step()
    if is_supernet(s.student):
        s.student.set_active(s.student.space.full())
    return record


def teacher_output(s: StepInputs, batch: Any) -> torch.Tensor | None:
    """The frozen teacher's prediction on the noised batch, or None without distillation."""
    if not (s.teacher is not None and s.settings.distill_weight > 0):
        return None
    x_t = s.noise_scheduler.add_noise(batch.x0, batch.noise, batch.t)  # (B,C,H,W)
    with torch.no_grad():
        out = call_denoiser(s.teacher, x_t, batch.t,
                            **expand_model_kwargs(batch_model_kwargs(batch, s.model_kwargs), x_t.shape[0]))
        return out.sample if hasattr(out, "sample") else out


def backward_archs(s: StepInputs, archs: Sequence[Mapping[str, Any] | None], batch: Any,
                    teacher_out: torch.Tensor | None) -> dict[str, float]:
    """Accumulate the gradients of the mean loss over ``archs``; returns the step's loss record."""
    record: dict[str, float] = {}
    tot = den = dis = 0.0
    for j, arch in enumerate(archs):
        if arch is not None:
            s.student.set_active(arch)
        res = expert_loss(s.student, None, batch, s.noise_scheduler, distill_weight=s.settings.distill_weight,
                          teacher_out=teacher_out, model_kwargs=s.model_kwargs)
        (res.total / len(archs)).backward()
        tot += float(res.total.detach())
        den += float(res.denoise.detach())
        dis += float(res.distill.detach())
        if s.choose_archs is not None and j == 0:
            record["loss_full"] = float(res.total.detach())
        if s.choose_archs is not None and j == 1:
            record["loss_smallest"] = float(res.total.detach())
    n = len(archs)
    record.update({"loss": tot / n, "denoise": den / n, "distill": dis / n})
    return record


def expand_model_kwargs(model_kwargs: Mapping[str, Any] | None, batch: int) -> dict[str, Any]:
    """Extra model inputs with a leading batch dimension of 1 expanded to ``batch``."""
    kw = dict(model_kwargs or {})
    for key, v in list(kw.items()):
        if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == 1 and batch > 1:
            kw[key] = v.expand(batch, *v.shape[1:])
    return kw
