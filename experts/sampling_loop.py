"""The seeded denoising loop shared by ``nas.sampling.generate`` and :class:`~experts.pipeline.MixturePipeline`.

Image ``i`` of run ``seed`` starts from noise drawn on the CPU by its own generator seeded from
``(seed, i)`` (:func:`image_seed`), and a stochastic sampler draws its step noise from a second
per-image generator seeded from ``(seed, i, 1)``. So a batch of images ``lo .. hi-1`` denoised
by :func:`denoise_batch` is the same whoever runs the loop: the benchmark (through
``nas.sampling.generate``) and a mixture pipeline reloaded with ``from_pretrained`` give the
same tensors for the same seed, timesteps and batches.

:class:`TimestepPlan` configures the scheduler for each batch: ``num_steps`` evenly spaced steps
(the scheduler's own ``set_timesteps(n)``) or an explicit descending timestep list (a
:class:`~experts.schedule.StepSchedule` or anything with ``.timesteps()``); a list equal to the
scheduler's own evenly spaced one runs through ``set_timesteps(n)``, so it gives the same
samples bit for bit.

Example:
    >>> image_seed(0, 3) == image_seed(0, 3) != image_seed(0, 4)
    True
    >>> initial_noise(0, 2, 4, (1, 2, 2)).shape
    torch.Size([2, 1, 2, 2])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from experts.explicit_timesteps import check_timesteps, set_explicit_timesteps
from experts.denoising import as_tensor
from search_spaces.errors import UserError

__all__ = ["TimestepPlan", "accepts", "denoise_batch", "draws_step_noise", "evenly_spaced_timesteps", "image_seed",
           "initial_noise"]


def image_seed(seed: int, index: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for image ``index`` of run ``seed`` (stream 0: initial noise)."""
    words = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, int(index), int(stream)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def initial_noise(seed: int, lo: int, hi: int, sample_shape: tuple[int, ...]) -> torch.Tensor:
    """(B, C, H, W) on the CPU: image ``i``'s noise from its own generator (module docstring)."""
    return torch.stack([
        torch.randn(tuple(sample_shape), generator=torch.Generator().manual_seed(image_seed(seed, i)))
        for i in range(lo, hi)
    ])


def accepts(fn: Callable, name: str) -> bool:
    """True when ``fn`` takes a parameter called ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


#: schedulers whose ``step`` never draws noise as :func:`denoise_batch` calls it (DDIM: no ``eta``
#: is passed, so eta = 0); exact class names, since a subclass may change ``step``
_DETERMINISTIC_STEP = frozenset({"DDIMScheduler"})


def draws_step_noise(scheduler: Any) -> bool:
    """True when ``scheduler.step`` takes a ``generator`` and may draw noise with it in
    :func:`denoise_batch` (False for DDIM at eta 0, whose step is deterministic: its 64
    per-image generators, about 1 ms per batch of 64 on a CPU, are then not built).

    Example:
        >>> from diffusers import DDIMScheduler, DDPMScheduler
        >>> draws_step_noise(DDIMScheduler()), draws_step_noise(DDPMScheduler())
        (False, True)
    """
    return accepts(scheduler.step, "generator") and type(scheduler).__name__ not in _DETERMINISTIC_STEP


def check_steps(num_steps: int) -> None:
    """UserError unless ``num_steps >= 1``."""
    if int(num_steps) < 1:
        raise UserError(f"num_steps must be >= 1, got {num_steps}")


def evenly_spaced_timesteps(scheduler: Any, num_steps: int) -> list[int]:
    """The timesteps ``scheduler`` visits with ``num_steps`` evenly spaced steps (a copy is configured)."""
    check_steps(num_steps)
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(int(num_steps))
    return [int(t) for t in fresh.timesteps]


class TimestepPlan:
    """How every batch configures the scheduler: ``num_steps`` evenly spaced steps (the
    scheduler's own ``set_timesteps(n)``) or an explicit descending timestep list.

    Raises:
        UserError: both or neither of ``num_steps`` and ``timesteps``, bad timesteps.
    """

    def __init__(self, scheduler: Any, num_steps: int | None, timesteps: Any) -> None:
        if (num_steps is None) == (timesteps is None):
            raise UserError("pass exactly one of num_steps and timesteps")
        self.explicit: list[int] | None = None
        self.scheduler = scheduler
        if timesteps is None:
            check_steps(num_steps)
            self.num_steps = int(num_steps)
            return
        ts = timesteps.timesteps() if hasattr(timesteps, "timesteps") and callable(timesteps.timesteps) else timesteps
        try:
            ts = check_timesteps(list(ts), scheduler.config.num_train_timesteps)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.num_steps = len(ts)
        # the scheduler's own evenly spaced list runs through its own set_timesteps(n): the
        # samples are bit-identical to a num_steps call
        if ts != evenly_spaced_timesteps(scheduler, len(ts)):
            self.explicit = ts

    def reset(self, device: torch.device | str | None) -> Any:
        """Configure for a new batch; returns the scheduler to step with."""
        if self.explicit is None:
            self.scheduler.set_timesteps(self.num_steps, device=device)
            return self.scheduler
        try:
            self.scheduler = set_explicit_timesteps(self.scheduler, self.explicit, device)
        except ValueError as e:
            raise UserError(str(e)) from None
        return self.scheduler


def denoise_batch(model: Callable, plan: TimestepPlan, seed: int, lo: int, hi: int, sample_shape: tuple[int, ...],
                  device: torch.device, encoder_hidden_states: torch.Tensor | None, bar: Any) -> torch.Tensor:
    """Images ``lo .. hi-1`` denoised along the plan's timesteps: (B, C, H, W) on ``device``.

    ``bar`` is anything with ``update(1)`` (called once per step).
    """
    noise = initial_noise(seed, lo, hi, sample_shape)  # (B,C,H,W) on CPU
    sched = plan.reset(device)
    x = noise.to(device) * sched.init_noise_sigma  # (B,C,H,W)
    kw = {}
    if encoder_hidden_states is not None:
        ehs = encoder_hidden_states.to(device)
        kw["encoder_hidden_states"] = ehs.expand(hi - lo, *ehs.shape[1:]) if ehs.shape[0] == 1 else ehs
    step_kw: dict[str, Any] = {}
    if draws_step_noise(sched):  # per-image step-noise generators, built only when step() may use them
        step_gens = [torch.Generator().manual_seed(image_seed(seed, i, 1)) for i in range(lo, hi)]
        step_kw["generator"] = step_gens if len(step_gens) > 1 else step_gens[0]
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        eps = as_tensor(model(x_in, t, **kw))  # (B,C,H,W)
        x = sched.step(eps, t, x, **step_kw).prev_sample
        bar.update(1)
    return x
