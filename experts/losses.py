"""Losses of the interval experts, shared by elastic training, fine-tuning, the router and the search.

- :func:`interval_timesteps`: training timesteps drawn inside one interval.
- :func:`denoising_loss`: the diffusion training loss (MSE to the scheduler's target: the noise
  for ``epsilon`` models, the velocity for ``v_prediction``, the clean sample for ``sample``).
- :func:`distillation_loss`: MSE between a student's and the frozen teacher's outputs.
- :func:`expert_loss`: denoising + ``distill_weight`` x distillation on one :class:`LossBatch`.
- :class:`HeldOutSet` / :func:`make_heldout` / :func:`proxy_loss`: a fixed, seeded evaluation
  set (clean images, noise and timesteps per interval) and the per-interval denoising loss of
  a mixture or of one expert per interval on it, with a step-weighted total: the search's cheap
  fidelity and the experts' table.

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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from experts.intervals import Intervals

__all__ = [
    "ExpertLoss",
    "HeldOutSet",
    "LossBatch",
    "ProxyLoss",
    "as_tensor",
    "denoising_loss",
    "distillation_loss",
    "expert_loss",
    "interval_timesteps",
    "make_batch",
    "make_heldout",
    "model_target",
    "proxy_loss",
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


def as_tensor(out: Any) -> torch.Tensor:
    """The prediction of a model call: a tensor, ``out.sample`` or ``out[0]``."""
    if torch.is_tensor(out):
        return out
    sample = getattr(out, "sample", None)
    if torch.is_tensor(sample):
        return sample
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}; expected a tensor or an object with .sample")


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
    return as_tensor(model(x, t, **kw))


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
    """One training batch of one interval: clean samples, noise, timesteps (all (B, ...))."""

    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor

    def to(self, device: str | torch.device) -> "LossBatch":
        return LossBatch(self.x0.to(device), self.noise.to(device), self.t.to(device))

    def __len__(self) -> int:
        return int(self.x0.shape[0])


def make_batch(
    images: torch.Tensor,
    intervals: Intervals,
    k: int,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> LossBatch:
    """Random images (with replacement), timesteps in interval ``k`` and noise, from ``generator``.

    Everything is drawn on the CPU from one generator, so a run is reproducible on any device.

    Example:
        >>> b = make_batch(torch.zeros(10, 1, 4, 4), Intervals(100, (50,)), 0, 3, torch.Generator().manual_seed(0))
        >>> tuple(b.x0.shape), bool((b.t < 50).all())
        ((3, 1, 4, 4), True)
    """
    idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator)  # (B,)
    x0 = images[idx.to(images.device)]  # (B,C,H,W)
    t = interval_timesteps(intervals, k, batch_size, generator)  # (B,)
    noise = torch.randn(tuple(x0.shape), generator=generator, dtype=torch.float32)  # (B,C,H,W) on CPU
    return LossBatch(x0, noise.to(dtype=x0.dtype), t)


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
    otherwise it is computed here under ``no_grad``. With ``distill_weight == 0`` or no
    teacher, the distillation term is zero.
    """
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


# --------------------------------------------------------------------------------------------
# held-out evaluation set and the proxy loss


@dataclass(frozen=True)
class HeldOutSet:
    """Fixed evaluation draws per interval: ``x0[k]`` (n, C, H, W), ``noise[k]``, ``t[k]`` (n,).

    Built once from a seed by :func:`make_heldout`; saved/loaded with safetensors so every
    method (router, search, fine-tuning) is scored on exactly the same draws.
    """

    intervals: Intervals
    x0: tuple[torch.Tensor, ...]
    noise: tuple[torch.Tensor, ...]
    t: tuple[torch.Tensor, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        n = self.intervals.num_intervals
        if not len(self.x0) == len(self.noise) == len(self.t) == n:
            raise ValueError(f"held-out set needs one entry per interval ({n})")

    @property
    def n_per_interval(self) -> int:
        return int(self.t[0].shape[0])

    def to(self, device: str | torch.device) -> "HeldOutSet":
        return HeldOutSet(self.intervals, tuple(x.to(device) for x in self.x0),
                          tuple(x.to(device) for x in self.noise), tuple(x.to(device) for x in self.t), self.seed)

    def save(self, path: str | Path) -> None:
        """One safetensors file (the intervals and seed in its metadata)."""
        from safetensors.torch import save_file

        tensors = {}
        for k in range(self.intervals.num_intervals):
            tensors[f"x0.{k}"] = self.x0[k].detach().cpu().contiguous()
            tensors[f"noise.{k}"] = self.noise[k].detach().cpu().contiguous()
            tensors[f"t.{k}"] = self.t[k].detach().cpu().contiguous()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"intervals": self.intervals.to_json(), "seed": str(self.seed)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "HeldOutSet":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            iv = Intervals.from_json(meta["intervals"])
            n = iv.num_intervals
            get = f.get_tensor
            out = cls(iv, tuple(get(f"x0.{k}") for k in range(n)), tuple(get(f"noise.{k}") for k in range(n)),
                      tuple(get(f"t.{k}") for k in range(n)), int(meta.get("seed", 0)))
        return out.to(device)


def make_heldout(images: torch.Tensor, intervals: Intervals, n_per_interval: int = 256, seed: int = 0) -> HeldOutSet:
    """A seeded held-out set: per interval, ``n`` images (without replacement when possible),
    stratified timesteps over the interval and fresh noise.

    Example:
        >>> h = make_heldout(torch.zeros(20, 1, 4, 4), Intervals(100, (50,)), n_per_interval=8, seed=1)
        >>> h.n_per_interval, bool((h.t[1] >= 50).all())
        (8, True)
    """
    if n_per_interval < 1:
        raise ValueError(f"n_per_interval must be >= 1, got {n_per_interval}")
    g = torch.Generator().manual_seed(int(seed))
    xs, ns, ts = [], [], []
    n_img = images.shape[0]
    for k in range(intervals.num_intervals):
        reps = math.ceil(n_per_interval / n_img)
        idx = torch.cat([torch.randperm(n_img, generator=g) for _ in range(reps)])[:n_per_interval]  # (n,)
        x0 = images[idx.to(images.device)].detach().cpu().float()  # (n,C,H,W)
        ts.append(interval_timesteps(intervals, k, n_per_interval, g, stratified=True))
        ns.append(torch.randn(tuple(x0.shape), generator=g))
        xs.append(x0)
    return HeldOutSet(intervals, tuple(xs), tuple(ns), tuple(ts), int(seed))


@dataclass(frozen=True)
class ProxyLoss:
    """Held-out denoising loss per interval and its weighted total.

    ``total = sum_k weights[k] * per_interval[k]`` with weights summing to 1 (by default the
    share of sampling steps each interval serves, else the share of training timesteps).
    """

    per_interval: tuple[float, ...]
    weights: tuple[float, ...]
    total: float

    def to_dict(self) -> dict[str, Any]:
        return {"per_interval": list(self.per_interval), "weights": list(self.weights), "total": self.total}


def _experts_per_interval(models: Any, n: int) -> list[Any]:
    mixture_experts = getattr(models, "expert_for", None)
    if callable(mixture_experts):  # a MixtureOfExperts
        return [models.expert_for(k) for k in range(n)]
    if isinstance(models, Sequence) and not isinstance(models, torch.nn.Module):
        if len(models) != n:
            raise ValueError(f"got {len(models)} experts for {n} intervals")
        return list(models)
    return [models] * n  # one model for every interval (the base model, a single supernet)


def proxy_loss(
    models: Any,
    archs: Sequence[Any] | None,
    heldout: HeldOutSet,
    noise_scheduler: Any,
    *,
    step_weights: Sequence[float] | None = None,
    batch_size: int = 256,
    model_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> ProxyLoss:
    """Held-out denoising loss of each interval's expert at its arch.

    Args:
        models: a :class:`~experts.mixture.MixtureOfExperts` (each interval scored with its own
            expert at the mixture's arch), a sequence of one model per interval, or one model
            used for every interval.
        archs: one arch per interval (or ``None`` entries / ``None`` = leave each expert as it
            is). Given archs are set on supernet experts with ``set_active`` and the previous
            arch is restored afterwards (a relaxed state is not restored: the expert is left at
            the given arch).
        heldout: the fixed draws (:func:`make_heldout`).
        noise_scheduler: for ``add_noise`` and the prediction target.
        step_weights: weight of each interval in ``total`` (e.g. sampling steps per interval,
            ``Intervals.steps_per_interval(timesteps)``); default: interval widths.
        batch_size: held-out samples per model call.
        device: where to run (default: the device of the first expert's parameters).

    Example::

        >>> pl = proxy_loss(experts, allocation.archs, heldout, sched)  # doctest: +SKIP
        >>> pl.per_interval, pl.total  # doctest: +SKIP
    """
    iv = heldout.intervals
    n = iv.num_intervals
    experts = _experts_per_interval(models, n)
    if archs is None and callable(getattr(models, "expert_for", None)):
        archs = list(models.archs)  # a mixture: each expert at the mixture's arch
    if archs is not None and len(archs) != n:
        raise ValueError(f"got {len(archs)} archs for {n} intervals")
    if step_weights is None:
        w = [float(hi - lo) for lo, hi in iv.spans()]
    else:
        if len(step_weights) != n:
            raise ValueError(f"got {len(step_weights)} step weights for {n} intervals")
        w = [float(x) for x in step_weights]
    total_w = sum(w)
    if total_w <= 0:
        raise ValueError("step weights must not all be zero")
    w = [x / total_w for x in w]
    per: list[float] = []
    for k in range(n):
        model = experts[k]
        arch = archs[k] if archs is not None else None
        dev = device
        if dev is None:
            p = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
            dev = p.device if p is not None else "cpu"
        restore = None
        if arch is not None and hasattr(model, "set_active"):
            restore = getattr(model, "active", None)
            model.set_active(arch)
        elif arch is not None:
            raise ValueError(f"interval {k}: an arch was given but the expert ({type(model).__name__}) is not a supernet")
        was_training = model.training if isinstance(model, torch.nn.Module) else None
        if was_training:
            model.eval()
        try:
            acc, count = 0.0, 0
            with torch.no_grad():
                m = heldout.t[k].shape[0]
                for s in range(0, m, batch_size):
                    sl = slice(s, min(m, s + batch_size))
                    x0 = heldout.x0[k][sl].to(dev)
                    loss = denoising_loss(model, x0, heldout.t[k][sl].to(dev), heldout.noise[k][sl].to(dev),
                                          noise_scheduler, model_kwargs=model_kwargs, reduction="none")  # (b,)
                    acc += float(loss.sum())
                    count += int(loss.shape[0])
            per.append(acc / count)
        finally:
            if was_training:
                model.train()
            if restore is not None:
                model.set_active(restore)
    total = float(sum(wk * lk for wk, lk in zip(w, per)))
    return ProxyLoss(tuple(per), tuple(w), total)
