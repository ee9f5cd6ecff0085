"""Sampling: DDIM (default), DDPM, DPM-Solver++ and Euler from diffusers, seeded per image,
batch-wise, with evenly spaced steps or an explicit (non-uniform) timestep list such as an
``experts.schedule.StepSchedule``.

The samplers are diffusers schedulers built from the *training* scheduler config with
``from_config``, so any base model (embedded, local folder, hub) samples with any of them.

Reproducibility guarantee of :func:`generate`: image ``i`` depends only on ``(seed, i)``, the
model, the sampler and its timesteps: its initial noise comes from its own CPU generator seeded
from ``(seed, i)``, and for the stochastic DDPM sampler the noise added at every step comes from
a second per-image CPU generator seeded from ``(seed, i, 1)`` (diffusers accepts one generator
per batch element). The noise is drawn on the CPU whatever the device, so it is the same
everywhere. The loop is :func:`experts.sampling_loop.denoise_batch`, which a
``experts.MixturePipeline`` called with ``seed=`` runs too (the same images, batch for batch). Hence on one device, image ``i`` is the same for any ``batch_size`` and any
``num_images > i`` up to the rounding of batched kernels (measured: max |diff| ~1e-5 on the CPU
between batch sizes 2 and 6 after 8 steps, 0 on an H200); the same seed gives bitwise-equal
images when called twice with the same arguments. Between CPU and CUDA the noise is identical
but the kernels differ (measured ~3e-3 max |diff| after 8 DDIM steps).

Example::

    >>> import torch
    >>> from nas.sampling import make_scheduler, generate
    >>> sched = make_scheduler("ddim", base.scheduler_config)  # doctest: +SKIP
    >>> x = generate(base.unet, sched, num_images=16, num_steps=50, batch_size=8, seed=0,
    ...              device="cpu", sample_shape=base.sample_shape)  # doctest: +SKIP
    >>> x.shape  # doctest: +SKIP
    torch.Size([16, 1, 16, 16])
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from experts.sampling_loop import TimestepPlan, denoise_batch, evenly_spaced_timesteps
from search_spaces.errors import UserError

log = logging.getLogger(__name__)


def _ddim(config: dict):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config)


def _ddpm(config: dict):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config)


def _dpmpp(config: dict):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")


def _euler(config: dict):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(config)


#: Sampler name -> builder from a scheduler config. "ddim" is the default (eta = 0).
SAMPLERS: dict[str, Callable[[dict], Any]] = {"ddim": _ddim, "ddpm": _ddpm, "dpm++": _dpmpp, "euler": _euler}
DEFAULT_SAMPLER = "ddim"

# keys of a scheduler config that belong to the class that wrote it, not to the noise schedule
_CLASS_KEYS = ("_class_name", "_diffusers_version")


def make_scheduler(name: str, scheduler_config: dict):
    """A fresh diffusers scheduler of kind ``name`` for the model trained with ``scheduler_config``.

    Raises:
        UserError: ``name`` is not one of :data:`SAMPLERS`.

    Example::

        >>> from diffusers import DDPMScheduler
        >>> s = make_scheduler("dpm++", dict(DDPMScheduler().config))
        >>> type(s).__name__, s.config.algorithm_type
        ('DPMSolverMultistepScheduler', 'dpmsolver++')
    """
    key = str(name).strip().lower()
    if key not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choices: {', '.join(SAMPLERS)}")
    config = {k: v for k, v in dict(scheduler_config).items() if k not in _CLASS_KEYS}
    return SAMPLERS[key](config)


def sampling_timesteps(scheduler, num_steps: int) -> list[int]:
    """The training-unit timesteps a sampler visits with ``num_steps`` steps, in visiting order.

    Does not change ``scheduler`` (a copy is configured).

    Example::

        >>> from diffusers import DDPMScheduler
        >>> sampling_timesteps(make_scheduler("ddim", dict(DDPMScheduler().config)), 4)
        [750, 500, 250, 0]
    """
    return evenly_spaced_timesteps(scheduler, num_steps)


@torch.no_grad()
def generate(
    model: Callable,
    scheduler,
    *,
    num_images: int,
    num_steps: int | None = None,
    timesteps: Sequence[int] | Any | None = None,
    batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
    sample_shape: tuple[int, int, int],
    vae: torch.nn.Module | None = None,
    latent_scale: float = 1.0,
    encoder_hidden_states: torch.Tensor | None = None,
    progress: bool = True,
    class_labels: Sequence[int] | torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    null_label: int | None = None,
) -> torch.Tensor:
    """Sample ``num_images`` images: (N, C, H, W) float32 on the CPU, in [-1, 1].

    Args:
        model: any ``model(x, t, **kw)`` returning a tensor or an object with ``.sample``
            (a diffusers UNet, a mixture of experts routing on ``t``, so each step of a
            schedule goes to the expert owning its timestep). ``t`` is a 0-dim tensor in
            training timestep units; ``kw`` holds ``encoder_hidden_states`` if given.
        scheduler: a diffusers scheduler (see :func:`make_scheduler`); it is reconfigured
            (``set_timesteps``) at the start of every batch.
        num_steps: evenly spaced steps, as the scheduler places them; or
        timesteps: an explicit, strictly descending list of training timesteps, or an
            ``experts.schedule.StepSchedule`` (anything with ``.timesteps()``). DDIM, DDPM, DPM-Solver++
            and Euler run any list (DDIM through ``experts.explicit_timesteps.ExplicitDDIMScheduler``, which steps
            to the next timestep of the list); a list equal to the scheduler's own
            ``num_steps`` list gives the same samples as ``num_steps``, bit for bit.
        num_images, batch_size: counts; the last batch may be smaller.
        seed: see the module docstring for the exact guarantee.
        device: where the model runs (the model and vae must already be there).
        sample_shape: (C, H, W) of the denoised tensor (latents for latent models).
        vae: decoder for latent models: images = ``vae.decode(latents / latent_scale).sample``.
        encoder_hidden_states: (1, L, D) or (B, L, D) context for conditional UNets; a (1, L, D)
            context is expanded to each batch.
        progress: tqdm bar over batches x steps.
        class_labels: for a class-conditional model (``class_labels=`` of its call): the class
            of each image, (N,); image ``i`` is conditioned on ``class_labels[i]`` (the initial
            noise is the same as without labels). None with a ``null_label``: unconditional
            samples (every call on the null class).
        guidance_scale: classifier-free guidance with ``class_labels`` (1: none; > 1: the null
            class and the labels in one batched call of twice the batch per step, see
            :mod:`experts.guidance`).
        null_label: the null class of a class-conditional model (needed for guidance and for
            unconditional samples; see ``experts.guidance.ClassCondition``).

    Example::

        >>> x = generate(unet, make_scheduler("ddim", cfg), num_images=4, num_steps=10,
        ...              batch_size=2, seed=0, sample_shape=(1, 16, 16))  # doctest: +SKIP
        >>> y = generate(unet, make_scheduler("dpm++", cfg), num_images=4, timesteps=[999, 600, 90, 0],
        ...              batch_size=2, seed=0, sample_shape=(1, 16, 16))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    plan = TimestepPlan(scheduler, num_steps, timesteps)
    if int(num_images) < 1 or int(batch_size) < 1:
        raise UserError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    labels = _check_class_labels(class_labels, int(num_images), float(guidance_scale), null_label)
    device = torch.device(device)
    modules = [m for m in (model, vae) if isinstance(m, torch.nn.Module)]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    n_batches = math.ceil(int(num_images) / int(batch_size))
    bar = tqdm(total=n_batches * plan.num_steps, desc="sampling", disable=not progress, dynamic_ncols=True)
    chunks: list[torch.Tensor] = []
    try:
        for b in range(n_batches):
            lo, hi = b * int(batch_size), min(int(num_images), (b + 1) * int(batch_size))
            x = denoise_batch(_batch_model(model, labels, lo, hi, guidance_scale, null_label), plan, seed, lo, hi,
                              sample_shape, device, encoder_hidden_states, bar)
            if vae is not None:
                x = vae.decode(x / float(latent_scale)).sample  # (B,C',H',W')
            chunks.append(x.clamp(-1, 1).to("cpu", torch.float32))
    finally:
        bar.close()
        for m, was in zip(modules, was_training):
            m.train(was)
    return torch.cat(chunks)  # (N,C,H,W)


def _check_class_labels(class_labels: Sequence[int] | torch.Tensor | None, num_images: int, guidance_scale: float,
                        null_label: int | None) -> torch.Tensor | None:
    """The (N,) int64 labels, after the checks of :func:`generate`'s conditioning arguments."""
    if guidance_scale < 1.0 or not math.isfinite(guidance_scale):
        raise UserError(f"guidance_scale must be >= 1 (1: no guidance), got {guidance_scale}")
    if class_labels is None:
        if guidance_scale != 1.0:
            raise UserError("guidance_scale > 1 needs class_labels (the classes to guide towards)")
        return None
    labels = torch.as_tensor(class_labels, dtype=torch.long).flatten().cpu()
    if labels.shape[0] != num_images:
        raise UserError(f"class_labels must give one class per image: {labels.shape[0]} for {num_images} images")
    if guidance_scale != 1.0 and null_label is None:
        raise UserError("classifier-free guidance needs the model's null class (null_label)")
    return labels


def _batch_model(model: Callable, labels: torch.Tensor | None, lo: int, hi: int, guidance_scale: float,
                 null_label: int | None) -> Callable:
    """``model`` as the loop calls it for images ``lo .. hi-1``: with their labels (and guidance),
    on the null class when only ``null_label`` is given, else as it is."""
    if labels is None and null_label is None:
        return model
    from experts.guidance import ConditionedModel

    return ConditionedModel(model, None if labels is None else labels[lo:hi], guidance_scale=guidance_scale,
                            null_label=int(null_label) if null_label is not None else -1)


def save_grid(images: torch.Tensor, path: Path | str, nrow: int | None = None, *, min_tile_px: int = 64,
              pad_px: int = 2) -> Path:
    """Write images (N, C, H, W) in [-1, 1] (C = 1 or 3) as one PNG grid; returns the path.

    Tiles are upscaled by an integer factor (nearest) so each is at least ``min_tile_px`` wide:
    16x16 digits become 64x64. ``nrow`` = images per row (default: ceil(sqrt(N))).

    Example::

        >>> import torch, tempfile, pathlib
        >>> p = save_grid(torch.zeros(4, 1, 16, 16), pathlib.Path(tempfile.mkdtemp()) / "g.png")
        >>> p.suffix
        '.png'
    """
    from PIL import Image

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1|3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = int(nrow) if nrow else max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    scale = max(1, math.ceil(min_tile_px / max(h, w)))
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (N,C,H,W)
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # (N,C,sH,sW)
    th, tw = h * scale, w * scale
    grid = torch.full((c, ncol * (th + pad_px) + pad_px, nrow * (tw + pad_px) + pad_px), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y0, x0 = pad_px + r * (th + pad_px), pad_px + q * (tw + pad_px)
        grid[:, y0:y0 + th, x0:x0 + tw] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(np.ascontiguousarray(arr[..., 0] if c == 1 else arr))  # L or RGB
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
