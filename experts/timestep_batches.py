"""What the timestep-similarity measures share: the training scheduler, fixed seeded batches,
the denoising target, cosine matrices (see :mod:`experts.similarity`).

Example:
    >>> import torch
    >>> batches = fixed_batches(torch.zeros(10, 1, 4, 4), num_batches=2, batch_size=3, seed=0)
    >>> len(batches), tuple(batches[0][0].shape)
    (2, (3, 1, 4, 4))
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_timesteps",
    "cosine_matrix",
    "fixed_batches",
    "make_training_scheduler",
    "progress_bar",
    "sample_of",
    "tidy_similarity",
]


def make_training_scheduler(scheduler_config: Mapping[str, Any] | Any):
    """A ``DDPMScheduler`` from a training scheduler config (or a scheduler, used as is if it
    has ``add_noise``): it defines ``x_t`` and the denoising target."""
    if hasattr(scheduler_config, "add_noise") and hasattr(scheduler_config, "config"):
        return scheduler_config
    from diffusers import DDPMScheduler

    cfg = {k: v for k, v in dict(scheduler_config).items() if not str(k).startswith("_")}
    known = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    return DDPMScheduler(**{k: v for k, v in cfg.items() if k in known})



def fixed_batches(
    images: torch.Tensor, num_batches: int, batch_size: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``num_batches`` seeded ``(x0, noise)`` pairs, each ``(batch_size, C, H, W)`` on the CPU.

    Images are drawn without replacement while the data set is large enough, else with.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if num_batches < 1 or batch_size < 1:
        raise ValueError(f"num_batches and batch_size must be >= 1, got {num_batches}, {batch_size}")
    n = int(images.shape[0])
    total = num_batches * batch_size
    g = torch.Generator().manual_seed(int(seed))
    if n >= total:
        idx = torch.randperm(n, generator=g)[:total]
    else:
        idx = torch.randint(0, n, (total,), generator=g)
    x0 = images[idx].to(torch.float32)  # (nb*bs, C, H, W)
    noise = torch.randn(x0.shape, generator=g)  # (nb*bs, C, H, W)
    return [(x0[i * batch_size:(i + 1) * batch_size], noise[i * batch_size:(i + 1) * batch_size])
            for i in range(num_batches)]


def sample_of(out: Any) -> torch.Tensor:
    """The prediction of a UNet call: ``out.sample``, ``out[0]`` or ``out`` itself."""
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def cosine_matrix(vectors: torch.Tensor) -> np.ndarray:
    """Cosine similarities of the rows of ``vectors`` (G, D): symmetric, unit diagonal, in [-1, 1].

    A zero row has similarity 0 with every other row (and 1 with itself).

    Example:
        >>> cosine_matrix(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])).round(3).tolist()
        [[1.0, 0.707, 0.0], [0.707, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    v = vectors.to(torch.float32)
    norms = v.norm(dim=1, keepdim=True)  # (G, 1)
    unit = v / norms.clamp_min(1e-30)
    unit[norms.squeeze(1) == 0] = 0
    S = (unit @ unit.T).double().cpu().numpy()  # (G, G)
    return tidy_similarity(S)


def tidy_similarity(S: np.ndarray) -> np.ndarray:
    """``S`` made exactly symmetric, with a unit diagonal and entries in [-1, 1]."""
    S = 0.5 * (S + S.T)
    np.fill_diagonal(S, 1.0)
    return np.clip(S, -1.0, 1.0)


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar that stays quiet when not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def check_timesteps(timesteps: Sequence[int], scheduler: Any) -> list[int]:
    """``timesteps`` as ints, checked to be non-empty and inside ``[0, T)``."""
    ts = [int(t) for t in timesteps]
    T = int(scheduler.config.num_train_timesteps)
    if not ts:
        raise ValueError("timesteps must not be empty")
    if any(not 0 <= t < T for t in ts):
        raise ValueError(f"timesteps must lie in [0, {T}), got {ts}")
    return ts
