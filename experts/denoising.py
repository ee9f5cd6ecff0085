"""Training losses of the interval experts, shared by elastic training, fine-tuning, the router and the search.

- :func:`interval_timesteps`: training timesteps drawn inside one interval.
- :func:`denoising_loss`: the diffusion training loss (MSE to the scheduler's target: the noise
  for ``epsilon`` models, the velocity for ``v_prediction``, the clean sample for ``sample``).
- :func:`distillation_loss`: MSE between a student's and the frozen teacher's outputs.
- :func:`expert_loss`: denoising + ``distill_weight`` x distillation on one :class:`LossBatch`.

The fixed held-out set and the proxy loss on it are in :mod:`experts.losses`.

Models are called as ``model(x_t, t, **model_kwargs)`` and may return a tensor or an object
with ``.sample`` (a diffusers UNet, an :class:`~search_spaces.ElasticUNet`, a mixture).

Example:
    >>> import torch
    >>> from diffusers import DDPMScheduler
    >>> from experts.intervals import Intervals
    >>> iv = Intervals(1000, (300, 700))
    >>> t = interval_timesteps(iv, 1, 8, torch.Generator().manual_seed(0))
    >>> bool(((t >= 300) & (t < 700)).all())
    True
    >>> sched = DDPMScheduler()
    >>> model = lambda x, t: torch.zeros_like(x)  # predicts no noise
    >>> x0, noise = torch.zeros(8, 1, 4, 4), torch.ones(8, 1, 4, 4)
    >>> float(denoising_loss(model, x0, t, noise, sched))
    1.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from experts.intervals import Intervals
from experts.text_condition import as_tensor, call_denoiser  # as_tensor re-exported: the model-output helper

__all__ = [
    "ExpertLoss",
    "LossBatch",
    "as_tensor",
    "batch_model_kwargs",
    "denoising_loss",
    "distillation_loss",
    "expert_loss",
    "interval_timesteps",
    "make_batch",
    "model_target",
    "training_scheduler",
]

_CLASS_KEYS = ("_class_name", "_diffusers_version")


def training_scheduler(scheduler_config: Mapping[str, Any]) -> Any:
    """A ``DDPMScheduler`` with the noise schedule of ``scheduler_config`` (for ``add_noise``).

    Example:
        >>> training_scheduler({"num_train_timesteps": 100}).config.num_train_timesteps
        100
    """
    from diffusers import DDPMScheduler

    config = {k: v for k, v in dict(scheduler_config).items() if k not in _CLASS_KEYS}
    return DDPMScheduler.from_config(config)


def interval_timesteps(
    intervals: Intervals,
    k: int,
    n: int,
    generator: torch.Generator | None = None,
    *,
    stratified: bool = False,
) -> torch.Tensor:
    """``n`` training timesteps (int64, CPU) drawn uniformly from interval ``k``'s span ``[lo, hi)``.

    ``stratified=True`` draws one timestep per equal slice of the span (lower-variance estimates
    of the interval's mean loss; used by the held-out set).

    Example:
        >>> iv = Intervals.uniform(1000, 4)
        >>> t = interval_timesteps(iv, 3, 4, torch.Generator().manual_seed(0), stratified=True)
        >>> [750 <= int(x) < 1000 for x in t]
        [True, True, True, True]
    """
    if not 0 <= k < intervals.num_intervals:
        raise ValueError(f"interval index {k} is outside [0, {intervals.num_intervals})")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    lo, hi = intervals.spans()[k]
    if not stratified:
        return torch.randint(lo, hi, (n,), generator=generator, dtype=torch.long)  # (n,)
    u = torch.rand(n, generator=generator, dtype=torch.float64)  # (n,)
    pos = (torch.arange(n, dtype=torch.float64) + u) / n  # (n,) one point per slice of [0, 1)
    return (lo + torch.floor(pos * (hi - lo))).long().clamp_(lo, hi - 1)  # (n,)


def model_target(noise_scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the model is trained to predict, per the scheduler's ``prediction_type``."""
    kind = getattr(noise_scheduler.config, "prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise ValueError(f"unsupported prediction_type {kind!r} (epsilon, v_prediction or sample)")


def _call(model: Callable, x: torch.Tensor, t: torch.Tensor, model_kwargs: Mapping[str, Any] | None) -> torch.Tensor:
    kw = dict(model_kwargs or {})
    b = x.shape[0]
    for key, v in list(kw.items()):  # a (1, ...) context is shared by the batch
        if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == 1 and b > 1:
            kw[key] = v.expand(b, *v.shape[1:])
    return as_tensor(call_denoiser(model, x, t, **kw))  # class labels -> prompts of a text model


def denoising_loss(
    model: Callable,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    noise_scheduler: Any,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """MSE between ``model(add_noise(x0, noise, t), t)`` and the scheduler's training target.

    Args:
        model: ``model(x_t, t, **model_kwargs)``.
        x0: clean samples (B, C, H, W) (latents for latent models).
        t: (B,) int64 training timesteps.
        noise: (B, C, H, W) standard normal noise.
        noise_scheduler: anything with ``add_noise`` and ``config.prediction_type`` (a
            ``DDPMScheduler``; see :func:`training_scheduler`).
        reduction: ``mean`` (scalar) or ``none`` (per-sample (B,) losses).
    """
    x_t = noise_scheduler.add_noise(x0, noise, t)  # (B,C,H,W)
    pred = _call(model, x_t, t, model_kwargs)  # (B,C,H,W)
    target = model_target(noise_scheduler, x0, noise, t)
    return _reduce(F.mse_loss(pred.float(), target.float(), reduction="none"), reduction)


def distillation_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """MSE between a student's prediction and the (detached) teacher's.

    Example:
        >>> float(distillation_loss(torch.ones(2, 3), torch.zeros(2, 3)))
        1.0
    """
    return _reduce(F.mse_loss(student_out.float(), teacher_out.detach().float(), reduction="none"), reduction)


def _reduce(err: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return err.mean()
    if reduction == "none":
        return err.flatten(1).mean(1)  # (B,)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


@dataclass(frozen=True)
class LossBatch:
    """One training batch of one interval: clean samples, noise, timesteps (all (B, ...)), and
    ``cond``: per-sample model inputs that travel with the samples (``class_labels`` (B,) of a
    class-conditional model), or None."""

    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    cond: Mapping[str, torch.Tensor] | None = None

    def to(self, device: str | torch.device) -> "LossBatch":
        cond = None if self.cond is None else {k: v.to(device) for k, v in self.cond.items()}
        return LossBatch(self.x0.to(device), self.noise.to(device), self.t.to(device), cond)

    def __len__(self) -> int:
        return int(self.x0.shape[0])


def make_batch(
    images: torch.Tensor,
    intervals: Intervals,
    k: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    *,
    labels: torch.Tensor | None = None,
    condition_dropout: float = 0.0,
    null_label: int | None = None,
) -> LossBatch:
    """Random images (with replacement), timesteps in interval ``k`` and noise, from ``generator``.

    Everything is drawn on the CPU from one generator, so a run is reproducible on any device.
    With ``labels`` ((N,) int64, one per image) the batch carries ``cond={"class_labels": ...}``
    of the drawn images; ``condition_dropout`` replaces each by ``null_label`` with that
    probability (drawn after the noise: the images, timesteps and noise are those of an
    unlabelled call).

    Example:
        >>> b = make_batch(torch.zeros(10, 1, 4, 4), Intervals(100, (50,)), 0, 3, torch.Generator().manual_seed(0))
        >>> tuple(b.x0.shape), bool((b.t < 50).all()), b.cond
        ((3, 1, 4, 4), True, None)
        >>> c = make_batch(torch.zeros(10, 1, 4, 4), Intervals(100, (50,)), 0, 3, torch.Generator().manual_seed(0),
        ...                labels=torch.arange(10))
        >>> bool(torch.equal(c.x0, b.x0)), tuple(c.cond["class_labels"].shape)
        (True, (3,))
    """
    idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator)  # (B,)
    x0 = images[idx.to(images.device)]  # (B,C,H,W)
    t = interval_timesteps(intervals, k, batch_size, generator)  # (B,)
    noise = torch.randn(tuple(x0.shape), generator=generator, dtype=torch.float32)  # (B,C,H,W) on CPU
    cond = None
    if labels is not None:
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have one entry per image: {labels.shape[0]} labels, {images.shape[0]} images")
        y = labels[idx.to(labels.device)].long()  # (B,)
        if condition_dropout:
            if null_label is None:
                raise ValueError("condition_dropout needs the null_label to drop to")
            from experts.guidance import drop_labels

            y = drop_labels(y, condition_dropout, generator, null_label)
        cond = {"class_labels": y}
    return LossBatch(x0, noise.to(dtype=x0.dtype), t, cond)


@dataclass(frozen=True)
class ExpertLoss:
    """The terms of :func:`expert_loss` (scalar tensors; ``total`` carries the gradient)."""

    total: torch.Tensor
    denoise: torch.Tensor
    distill: torch.Tensor


def expert_loss(
    student: Callable,
    teacher: Callable | None,
    batch: LossBatch,
    noise_scheduler: Any,
    *,
    distill_weight: float = 1.0,
    teacher_out: torch.Tensor | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> ExpertLoss:
    """Denoising loss + ``distill_weight`` x distillation from the frozen ``teacher``.

    ``teacher_out`` (the teacher's prediction on the same noisy batch) can be passed when it is
    shared by several students (the sandwich rule evaluates several sub-networks per batch);
    the batch's own ``cond`` (per-sample class labels) is passed to both models, over
    ``model_kwargs`` of the same name;
    otherwise it is computed here under ``no_grad``. With ``distill_weight == 0`` or no
    teacher, the distillation term is zero.
    """
    model_kwargs = batch_model_kwargs(batch, model_kwargs)
    x_t = noise_scheduler.add_noise(batch.x0, batch.noise, batch.t)  # (B,C,H,W)
    target = model_target(noise_scheduler, batch.x0, batch.noise, batch.t)
    pred = _call(student, x_t, batch.t, model_kwargs)  # (B,C,H,W)
    denoise = F.mse_loss(pred.float(), target.float())
    if distill_weight and (teacher is not None or teacher_out is not None):
        if teacher_out is None:
            with torch.no_grad():
                teacher_out = _call(teacher, x_t, batch.t, model_kwargs)
        distill = distillation_loss(pred, teacher_out)
    else:
        distill = torch.zeros((), device=pred.device)
    return ExpertLoss(denoise + float(distill_weight) * distill, denoise, distill)


def batch_model_kwargs(batch: LossBatch, model_kwargs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``model_kwargs`` with the batch's per-sample ``cond`` on top (None when both are empty).

    Example:
        >>> b = LossBatch(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2), {"class_labels": torch.tensor([1, 2])})
        >>> sorted(batch_model_kwargs(b, {"encoder_hidden_states": torch.zeros(1, 1, 4)}))
        ['class_labels', 'encoder_hidden_states']
    """
    if not batch.cond:
        return None if model_kwargs is None else dict(model_kwargs)
    return {**dict(model_kwargs or {}), **dict(batch.cond)}
