"""Fine-tuning an expert for the steps it takes: trajectory distillation along a step schedule.

A mixture sampled along a schedule of few, uneven steps makes two errors: its experts are
pruned, and each of its DDIM steps jumps further than the reference sampler's. The denoising
loss sees only the first. :func:`distill_along_schedule` trains an expert so that **one DDIM
step of the expert from a scheduled timestep ``t`` lands where the base model's reference
sampler lands** after its own (finer) steps from ``t`` down to the schedule's next timestep
(the target of progressive distillation, Salimans & Ho 2022, generalised to any pair of
timesteps and to a pruned student). Inputs are noised training images at the expert's
scheduled timesteps, as in progressive distillation.

The loss compares the two landing points, divided by the step's noise coefficient
``c = sqrt(1 - a_next) - sqrt(a_next (1 - a_t) / a_t)`` (``a`` the cumulative alphas), which
puts it on the scale of the epsilon prediction: without DDIM's ``clip_sample`` it is exactly the
MSE between the expert's epsilon and the epsilon whose step hits the teacher's point. When the
next timestep is the reference sampler's own next step, the target is the teacher's prediction
itself (plain output distillation).

DDIM (eta 0) only: the landing point of another solver depends on its history.

Example:
    >>> import torch
    >>> from diffusers import DDIMScheduler
    >>> sched = DDIMScheduler(num_train_timesteps=100, clip_sample=False)
    >>> teacher = ScheduleTeacher(lambda x, t: torch.zeros_like(x), sched, [90, 40], reference=range(99, -1, -10))
    >>> teacher.chain(90), teacher.chain(40)
    ([90, 89, 79, 69, 59, 49], [40, 39, 29, 19, 9])
    >>> x = torch.randn(2, 1, 4, 4)
    >>> eps, land = teacher.target(x, torch.tensor([90, 40]))
    >>> tuple(land.shape), bool(torch.allclose(eps, torch.zeros_like(eps), atol=1e-5))
    ((2, 1, 4, 4), True)
"""

from __future__ import annotations

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

from experts.checkpoint import jsonable, recover_checkpoint, save_checkpoint
from experts.text_condition import call_denoiser
from experts.train_loop import resume_training  # the elastic stage's resume rules, shared

log = logging.getLogger(__name__)

__all__ = ["DistillSettings", "ScheduleTeacher", "ddim_landing", "distill_along_schedule"]


def _alpha(scheduler: Any, t: torch.Tensor) -> torch.Tensor:
    """Cumulative alpha at training timesteps ``t`` (B,), -1 meaning the clean sample. -> (B,)"""
    ac = scheduler.alphas_cumprod.to(torch.float32)
    final = torch.as_tensor(float(scheduler.final_alpha_cumprod), dtype=torch.float32)
    return torch.where(t >= 0, ac[t.clamp(min=0).cpu()], final)


def ddim_landing(eps: torch.Tensor, x: torch.Tensor, a_t: torch.Tensor, a_next: torch.Tensor,
                 clip_range: float | None) -> torch.Tensor:
    """Where one deterministic DDIM step from ``x`` (cumulative alpha ``a_t``) lands at ``a_next``.

    Per sample: ``x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)`` (clamped to ``clip_range`` as
    DDIM's ``clip_sample`` does), then ``sqrt(a_next) x0 + sqrt(1 - a_next) eps``; equal to
    ``DDIMScheduler.step`` with eta 0, differentiable in ``eps``.

    Args:
        eps, x: (B, C, H, W).
        a_t, a_next: (B,) cumulative alphas of the start and of the landing timestep.

    Example:
        >>> import torch
        >>> x, eps = torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2)
        >>> y = ddim_landing(eps, x, torch.tensor([0.5]), torch.tensor([0.5]), None)
        >>> bool(torch.allclose(y, x, atol=1e-6))
        True
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    a_t, a_next = a_t.to(x).view(shape), a_next.to(x).view(shape)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()  # (B,C,H,W)
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps


def _noise_coefficient(a_t: torch.Tensor, a_next: torch.Tensor) -> torch.Tensor:
    """``d landing / d eps`` of an unclipped DDIM step (negative when ``a_next > a_t``). -> (B,)"""
    return (1 - a_next).sqrt() - (a_next * (1 - a_t) / a_t).sqrt()


class ScheduleTeacher:
    """The frozen base model's landing points along a step schedule.

    Args:
        model: the teacher, called as ``model(x, t, **kwargs)`` (a diffusers UNet or a callable
            returning the epsilon prediction).
        scheduler: the DDIM sampler whose noise schedule and ``clip_sample`` the mixture uses.
        timesteps: the schedule (training timesteps, the order does not matter).
        reference: the reference sampler's timesteps (e.g. the 50-step DDIM grid); the teacher
            steps from ``t`` through every reference timestep strictly between the schedule's
            next timestep and ``t``.
    """

    def __init__(self, model: Callable, scheduler: Any, timesteps: Sequence[int], *,
                 reference: Sequence[int]) -> None:
        ts = sorted({int(t) for t in timesteps}, reverse=True)
        if not ts:
            raise ValueError("the schedule has no timesteps")
        self.model = model
        self.scheduler = scheduler
        self.clip_range = float(scheduler.config.clip_sample_range) if scheduler.config.clip_sample else None
        self.reference = sorted({int(t) for t in reference}, reverse=True)
        self.next_of = dict(zip(ts, [*ts[1:], -1]))

    def chain(self, t: int) -> list[int]:
        """The timesteps the teacher visits from ``t`` before landing on the schedule's next one."""
        nxt = self.next_of[int(t)]
        return [int(t)] + [g for g in self.reference if nxt < g < int(t)]

    @torch.no_grad()
    def target(self, x: torch.Tensor, t: torch.Tensor,
               model_kwargs: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(epsilon whose DDIM step lands on the teacher's point, the teacher's landing point).

        Args:
            x: (B, C, H, W) samples at timesteps ``t`` (B,), each a timestep of the schedule.
            model_kwargs: per-sample tensors (leading dimension B) or shared ones (leading 1).
        """
        land = self.landing(x, t, model_kwargs)
        a_t, a_next = _alpha(self.scheduler, t), _alpha(self.scheduler, torch.tensor(
            [self.next_of[int(v)] for v in t.tolist()]))
        shape = (-1,) + (1,) * (x.ndim - 1)
        sa_t, sa_n = a_t.to(x).sqrt().view(shape), a_next.to(x).sqrt().view(shape)
        # unclipped inversion of the DDIM step: landing = sqrt(a_n / a_t) x + c eps
        eps = (land - sa_n / sa_t * x) / _noise_coefficient(a_t, a_next).to(x).view(shape)
        return eps, land

    @torch.no_grad()
    def landing(self, x: torch.Tensor, t: torch.Tensor, model_kwargs: Mapping[str, Any] | None = None) -> torch.Tensor:
        """The teacher's landing point from ``x`` (B, C, H, W) at ``t`` (B,): where its reference
        steps reach at each sample's next scheduled timestep (what :func:`distill_along_schedule`
        trains against; :meth:`target` adds the epsilon that lands there)."""
        return self._walk(x, [self.chain(int(v)) + [self.next_of[int(v)]] for v in t.tolist()], model_kwargs)

    def _walk(self, x: torch.Tensor, paths: Sequence[Sequence[int]], kw: Mapping[str, Any] | None) -> torch.Tensor:
        """The teacher's DDIM steps, sample ``i`` along ``paths[i]`` (its last entry the landing
        timestep, -1: the clean sample). One teacher call per level of the longest path, on
        every sample still walking, each at its own timestep (few, large calls)."""
        depth = max(len(p) for p in paths) - 1
        x = x.clone()
        for j in range(depth):
            rows = [i for i, p in enumerate(paths) if len(p) - 1 > j]
            idx = torch.tensor(rows, device=x.device)
            cur = torch.tensor([paths[i][j] for i in rows], dtype=torch.long, device=x.device)
            nxt = torch.tensor([paths[i][j + 1] for i in rows], dtype=torch.long)
            out = call_denoiser(self.model, x[idx], cur, **_rows(kw, idx, x.shape[0]))
            eps = out.sample if hasattr(out, "sample") else out
            x[idx] = ddim_landing(eps, x[idx], _alpha(self.scheduler, cur), _alpha(self.scheduler, nxt),
                                  self.clip_range)
        return x


def _rows(kw: Mapping[str, Any] | None, rows: torch.Tensor, batch: int) -> dict[str, Any]:
    """Per-sample model kwargs restricted to ``rows`` (shared ones kept as they are)."""
    out: dict[str, Any] = {}
    for key, v in (kw or {}).items():
        out[key] = v[rows] if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == batch and batch > 1 else v
    return out


@dataclass(frozen=True)
class DistillSettings:
    """The fine-tuning budget and optimiser of one expert (the mixture's common budget).

    Example:
        >>> DistillSettings(steps=10).identity()["batch_size"]
        32
    """

    steps: int = 200
    batch_size: int = 32
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    checkpoint_every: int = 50
    seed: int = 0

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must share to be resumed (all but ``steps`` and ``checkpoint_every``)."""
        return {"batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay, "grad_clip": self.grad_clip, "seed": self.seed}


@dataclass(frozen=True)
class DistillLog:
    """What :func:`distill_along_schedule` did: final step, per-step losses, seconds (all calls)."""

    step: int
    losses: tuple[dict[str, float], ...]
    seconds: float


def distill_along_schedule(
    student: nn.Module,
    teacher: ScheduleTeacher,
    images: torch.Tensor,
    timesteps: Sequence[int],
    settings: DistillSettings,
    ckpt_dir: Path,
    identity: Mapping[str, Any],
    *,
    stream: int = 0,
    device: str | torch.device = "cpu",
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "distill",
    max_steps_this_call: int | None = None,
) -> DistillLog:
    """Train ``student`` so its DDIM steps at ``timesteps`` land where ``teacher``'s land.

    Each step draws ``batch_size`` images (with replacement), one of ``timesteps`` per image and
    the noise, from a generator seeded by (``settings.seed``, ``stream``); resumes from
    ``ckpt_dir`` like the elastic stage (same identity required).

    Args:
        student: the (plain, materialised) expert; trained in place.
        teacher: the base model along the mixture's schedule.
        images: (N, C, H, W) training samples, on the CPU.
        timesteps: the scheduled timesteps this expert serves.
        identity: what must match to resume a checkpoint.
        max_steps_this_call: stop after this many steps (checkpointed; a later call continues).
    """
    from tqdm.auto import tqdm

    if not timesteps:
        raise ValueError("an expert with no scheduled timesteps has nothing to distil")
    dev = torch.device(device)
    student.to(dev)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(int(settings.seed) * 1_000_003 + int(stream))
    rng = np.random.default_rng([int(settings.seed), int(stream)])  # unused; kept for the checkpoint format
    ident = jsonable({**dict(identity), "settings": settings.identity()})
    recover_checkpoint(ckpt_dir)
    step, losses, seconds = resume_training(ckpt_dir, ident, student, opt, gen, rng, settings.steps, desc)
    end = settings.steps if max_steps_this_call is None else min(settings.steps, step + int(max_steps_this_call))
    ts = torch.tensor(sorted(int(t) for t in timesteps), dtype=torch.long)
    pbar = tqdm(total=settings.steps, initial=step, desc=desc, disable=not progress, dynamic_ncols=True)
    t_start = time.perf_counter()

    def save() -> None:
        state = {"step": step, "identity": ident, "losses": losses, "seconds": seconds + time.perf_counter() - t_start}
        save_checkpoint(ckpt_dir, student, opt, gen, rng, state)

    student.train()
    try:
        while step < end:
            loss = _distill_step(student, teacher, images, ts, settings, gen, opt, params, dev, model_kwargs)
            if not math.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss at step {step + 1}; lower the learning rate")
            step += 1
            losses.append({"step": step, "loss": round(loss, 6)})
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss:.4f}")
            if step % settings.checkpoint_every == 0 and step < end:
                save()
        save()
    finally:
        pbar.close()
        student.eval()
    return DistillLog(step, tuple(losses), seconds + time.perf_counter() - t_start)


def _distill_step(student: nn.Module, teacher: ScheduleTeacher, images: torch.Tensor, ts: torch.Tensor,
                  settings: DistillSettings, gen: torch.Generator, opt: torch.optim.Optimizer,
                  params: list[nn.Parameter], dev: torch.device, model_kwargs: Mapping[str, Any] | None) -> float:
    """One optimiser step; returns its loss (epsilon scale)."""
    b = settings.batch_size
    idx = torch.randint(0, images.shape[0], (b,), generator=gen)  # (B,)
    t = ts[torch.randint(0, ts.numel(), (b,), generator=gen)]  # (B,)
    x0 = images[idx].to(dev)  # (B,C,H,W)
    noise = torch.randn(x0.shape, generator=gen).to(dev)
    a_t = _alpha(teacher.scheduler, t).to(dev)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    x = a_t.sqrt().view(shape) * x0 + (1 - a_t).sqrt().view(shape) * noise  # q(x_t | x0)
    t = t.to(dev)
    kw = dict(model_kwargs or {})
    land = teacher.landing(x, t, kw)
    a_next = _alpha(teacher.scheduler, torch.tensor([teacher.next_of[int(v)] for v in t.tolist()])).to(dev)
    out = call_denoiser(student, x, t, **kw)
    eps = out.sample if hasattr(out, "sample") else out
    mine = ddim_landing(eps, x, a_t, a_next, teacher.clip_range)
    scale = _noise_coefficient(a_t, a_next).abs().view(shape)
    loss = (((mine - land) / scale) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if settings.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
    opt.step()
    return float(loss.detach())

