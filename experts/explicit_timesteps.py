"""Run a diffusers scheduler on an explicit, possibly non-uniform, descending timestep list.

``DPMSolverMultistepScheduler``, ``DDPMScheduler`` and ``EulerDiscreteScheduler`` take
``set_timesteps(timesteps=[...])``. ``DDIMScheduler`` does not, and its ``step`` computes the
previous timestep as ``t - T // num_inference_steps``, which is wrong for a non-uniform list:
:class:`ExplicitDDIMScheduler` steps from each timestep to the next one of the list (and from
the last one to the clean sample, as DDIM does).

Example:
    >>> import torch
    >>> from diffusers import DDIMScheduler
    >>> s = set_explicit_timesteps(DDIMScheduler(), [900, 400, 30])
    >>> type(s).__name__, s.timesteps.tolist(), s.previous_timestep(400)
    ('ExplicitDDIMScheduler', [900, 400, 30], 30)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DDIMScheduler

__all__ = ["ExplicitDDIMScheduler", "check_timesteps", "set_explicit_timesteps"]


def check_timesteps(timesteps: Sequence[int | float], num_train_timesteps: int) -> list[int]:
    """``timesteps`` as ints, checked: non-empty, strictly descending, integral, in ``[0, T)``.

    Raises:
        ValueError: naming the first offending entry.
    """
    out: list[int] = []
    for i, t in enumerate(timesteps):
        v = float(t)
        if v != int(v):
            raise ValueError(f"timestep {i} ({t}) is not an integer training timestep")
        v = int(v)
        if not 0 <= v < int(num_train_timesteps):
            raise ValueError(f"timestep {i} ({v}) is outside [0, {num_train_timesteps})")
        if out and v >= out[-1]:
            raise ValueError(f"timesteps must be strictly descending: entry {i} ({v}) follows {out[-1]}")
        out.append(v)
    if not out:
        raise ValueError("a schedule needs at least one timestep")
    return out


class ExplicitDDIMScheduler(DDIMScheduler):
    """``DDIMScheduler`` that also takes ``set_timesteps(timesteps=[...])``.

    With explicit timesteps, ``step(eps, t, x)`` goes from ``t`` to the next timestep of the
    list (the last goes to the clean sample). Without them it is exactly ``DDIMScheduler``.
    The step reuses the parent's arithmetic unchanged: DDIM uses ``final_alpha_cumprod`` when
    its computed previous timestep is negative, so the step sets that to the intended
    previous timestep's value and forces the negative branch.
    """

    _explicit_prev: dict[int, int] | None = None

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None) -> None:
        if timesteps is None:
            self._explicit_prev = None
            super().set_timesteps(num_inference_steps, device)
            return
        if num_inference_steps is not None:
            raise ValueError("pass either num_inference_steps or timesteps, not both")
        ts = check_timesteps(timesteps, self.config.num_train_timesteps)
        self.num_inference_steps = len(ts)
        self.timesteps = torch.tensor(ts, dtype=torch.int64, device=device)
        self._explicit_prev = dict(zip(ts, [*ts[1:], -1]))

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The timestep ``step`` goes to from ``timestep`` (-1: the clean sample)."""
        t = int(timestep)
        if self._explicit_prev is None:
            return t - self.config.num_train_timesteps // self.num_inference_steps
        if t not in self._explicit_prev:
            listed = sorted(self._explicit_prev, reverse=True)
            raise ValueError(f"timestep {t} is not in the explicit schedule {listed}")
        return self._explicit_prev[t]

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             eta: float = 0.0, use_clipped_model_output: bool = False, generator: Any = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True) -> Any:
        kw = dict(eta=eta, use_clipped_model_output=use_clipped_model_output, generator=generator,
                  variance_noise=variance_noise, return_dict=return_dict)
        if self._explicit_prev is None:
            return super().step(model_output, timestep, sample, **kw)
        prev = self.previous_timestep(timestep)
        saved = (self.final_alpha_cumprod, self.num_inference_steps)
        if prev >= 0:
            self.final_alpha_cumprod = self.alphas_cumprod[prev]
        self.num_inference_steps = 1  # t - T // 1 < 0 for every t < T: the final_alpha_cumprod branch
        try:
            return super().step(model_output, timestep, sample, **kw)
        finally:
            self.final_alpha_cumprod, self.num_inference_steps = saved


def set_explicit_timesteps(scheduler: Any, timesteps: Sequence[int | float],
                           device: str | torch.device | None = None) -> Any:
    """Configure ``scheduler`` to visit ``timesteps``; returns the scheduler to sample with.

    A ``DDIMScheduler`` is replaced by an :class:`ExplicitDDIMScheduler` with the same config
    (the argument is left unchanged); other schedulers must accept
    ``set_timesteps(timesteps=...)`` and are configured in place.

    Raises:
        ValueError: bad timesteps, or a scheduler without explicit timesteps (e.g. UniPC).
    """
    ts = check_timesteps(timesteps, scheduler.config.num_train_timesteps)
    if isinstance(scheduler, DDIMScheduler) and not isinstance(scheduler, ExplicitDDIMScheduler):
        scheduler = ExplicitDDIMScheduler.from_config(scheduler.config)
    elif "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(f"{type(scheduler).__name__} cannot run explicit timesteps (its set_timesteps "
                         f"takes no timesteps=); use DDIM, DDPM, DPM-Solver++ or Euler")
    scheduler.set_timesteps(timesteps=ts, device=device)
    return scheduler
