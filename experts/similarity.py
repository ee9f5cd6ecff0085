"""How alike the denoising task is at two timesteps: a ``G x G`` similarity matrix.

Two measures over a grid of training timesteps ``t_1 < ... < t_G``:

- ``gradient`` (the method's measure): for each grid timestep ``t``, the gradient of the
  denoising loss ``|| unet(x_t, t) - target ||^2`` (``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)
  eps`` from the model's training scheduler, ``DDPMScheduler.add_noise``; the target follows
  the scheduler's ``prediction_type``: ``eps``, ``v`` or ``x0``) with respect to every
  floating-point parameter of the UNet, on ``num_batches`` fixed batches. The same ``x0`` and
  noise are used at every ``t`` (seeded), so differences between timesteps are not sampling
  noise. Entry ``(a, b)``, with ``aggregate="per_batch"`` (default), is the cosine of the
  gradients at ``t_a`` and ``t_b`` on the same batch, averaged over the batches: "does a
  training step at ``t_a`` on this batch move the weights the way a step at ``t_b`` would".
  With ``aggregate="mean"`` it is the cosine of the gradients averaged over all batches first.
  **Cost:** ``G * num_batches`` forward+backward passes of ``batch_size`` images (e.g. 20 x 4
  = 80 for the defaults) and ``G`` stored gradient vectors.

  Why per batch by default: a trained model's mean gradient at one timestep is small next to
  its batch-to-batch noise (on the demo digits model, ``||E g||^2`` is 1-74% of ``E ||g||^2``
  for batches of 64, depending on ``t``). As the batches share ``x0`` and noise across ``t``,
  the cosine of the *averaged* gradients is dominated by that shared noise for few images and
  drifts as images are added (10-point grid, off-diagonal mean: 0.71 with 64 images, 0.29
  with 256, 0.10 with 1,024). The per-batch cosine has an expectation that depends on ``batch_size`` only, so
  more batches just lower its variance (measured: the mean absolute difference between the
  matrices of disjoint batch sets fell 0.16 -> 0.11 -> 0.09 for 2 -> 4 -> 8 batches of 64,
  against 0.24-0.26 for ``mean``).
- ``activation``: the cosine similarity of one intermediate activation (default the UNet's
  ``mid_block`` output) at ``t_a`` and ``t_b`` for the same image and noise, averaged over the
  images. **Cost:** ``G * num_batches`` forward passes, no backward.

Memory of the gradient measure: ``G`` vectors of ``P`` numbers (``P`` = parameter count).
``projection_dim`` replaces each by a count sketch of that many dimensions (each parameter is
hashed, with a seeded random sign, into one of ``projection_dim`` buckets: a fixed sparse random
projection whose inner products are unbiased, cosine error about ``1 / sqrt(projection_dim)``).
``"auto"`` keeps exact gradients while the ``G x P`` matrix fits in 1 GiB (float32), and
sketches to 65,536 dimensions above that (large latent-diffusion UNets).

Example:
    >>> import torch
    >>> from diffusers import UNet2DModel
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
    ...                    norm_num_groups=4, layers_per_block=1, add_attention=False,
    ...                    down_block_types=("DownBlock2D", "DownBlock2D"),
    ...                    up_block_types=("UpBlock2D", "UpBlock2D"))
    >>> images = torch.rand(16, 1, 8, 8) * 2 - 1
    >>> S = timestep_similarity(unet, images, {"num_train_timesteps": 1000}, [100, 500, 900],
    ...                         num_batches=1, batch_size=4, progress=False)
    >>> S.shape, bool((abs(S.diagonal() - 1) < 1e-6).all())
    ((3, 3), True)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from experts.denoising import model_target
from experts.sketch import CountSketch, ProjectionDim, resolve_projection_dim
from experts.text_condition import call_denoiser
from experts.timestep_batches import (
    check_timesteps,
    cosine_matrix,
    fixed_batches,
    make_training_scheduler,
    progress_bar,
    sample_of,
    tidy_similarity,
)

__all__ = ["AGGREGATES", "MEASURES", "activation_similarity", "gradient_similarity", "timestep_similarity"]

log = logging.getLogger(__name__)

MEASURES = ("gradient", "activation")
AGGREGATES = ("per_batch", "mean")

UnetKwargs = Callable[[int], Mapping[str, Any]]


@contextlib.contextmanager
def _grad_mode(module: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Eval mode and ``requires_grad`` on ``params`` for the duration; restored afterwards."""
    was_training = module.training
    flags = [p.requires_grad for p in params]
    module.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        module.train(was_training)


# --------------------------------------------------------------------------------------------
# measures


def gradient_similarity(
    unet: torch.nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    scheduler: Any,
    timesteps: Sequence[int],
    *,
    aggregate: str = "per_batch",
    projection_dim: ProjectionDim = "auto",
    seed: int = 0,
    device: torch.device | str | None = None,
    unet_kwargs: UnetKwargs | None = None,
    batch_kwargs: Sequence[Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Cosine similarity of the denoising-loss gradients at each pair of ``timesteps``.

    ``aggregate="per_batch"`` (default): the cosine of the two gradients on the same batch,
    averaged over the batches; ``"mean"``: the cosine of the gradients averaged over all batches
    (see the module docstring for why the default is per batch). Cost:
    ``len(timesteps) * len(batches)`` forward+backward passes; memory ``len(timesteps)``
    gradient vectors. The UNet's parameters, ``.grad`` and train/eval mode are left as they
    were (it runs in eval mode).

    Args:
        unet: a diffusers UNet (or anything called as ``unet(x_t, t, **kw)`` returning ``.sample``).
        batches: fixed ``(x0, noise)`` pairs (see :func:`fixed_batches`), reused at every ``t``.
        scheduler: the training scheduler (``add_noise``, ``config.prediction_type``).
        timesteps: training timesteps, the rows/columns of the result, in order.
        aggregate: ``per_batch`` or ``mean``.
        projection_dim: ``"auto"``, ``None`` (exact) or a count-sketch size.
        seed: seeds the count sketch.
        device: where to compute (default: the UNet's device).
        unet_kwargs: ``batch_size -> extra keyword arguments`` of the UNet call (e.g.
            ``encoder_hidden_states`` of a conditional UNet).
        batch_kwargs: per batch, UNet inputs that belong to its images (``class_labels`` (B,)
            of a class-conditional UNet; see :func:`fixed_batch_labels`), over ``unet_kwargs``.
        progress: tqdm bar.

    Returns:
        ``(G, G)`` float64 numpy array.
    """
    _check_batch_kwargs(batch_kwargs, batches)
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    if not batches:
        raise ValueError("batches must not be empty")
    ts = check_timesteps(timesteps, scheduler)
    params, dev, sketch, width = _gradient_setup(unet, projection_dim, seed, device, len(ts))
    log.info(
        "gradient similarity (%s): %d timesteps x %d batches = %d backward passes, %s", aggregate, len(ts),
        len(batches), len(ts) * len(batches),
        f"count sketch of {width} dims" if sketch is not None else f"exact gradients ({width:,} parameters)",
    )
    rows = torch.zeros(len(ts), width, dtype=torch.float32)  # (G, D) CPU: this batch's or the summed gradients
    gram = torch.zeros(len(ts), len(ts), dtype=torch.float64)  # per_batch: sum over batches of cosines
    bar = progress_bar(len(ts) * len(batches), "gradient similarity", progress)
    with _grad_mode(unet, params):
        for bi, (x0, noise) in enumerate(batches):
            x0 = x0.to(dev)  # (B, C, H, W)
            noise = noise.to(dev)
            kw = _kwargs_of_batch(unet_kwargs, batch_kwargs, bi, x0.shape[0], dev)
            for gi, t in enumerate(ts):
                flat = _flat_gradient(unet, scheduler, params, sketch, x0, noise, t, kw)  # (D,)
                if aggregate == "mean":
                    rows[gi] += flat.cpu()
                else:
                    rows[gi] = flat.cpu()
                bar.update(1)
            if aggregate == "per_batch":
                gram += torch.from_numpy(cosine_matrix(rows))
    bar.close()
    if aggregate == "mean":
        return cosine_matrix(rows)
    return tidy_similarity((gram / len(batches)).numpy())


def _gradient_setup(unet: torch.nn.Module, projection_dim: ProjectionDim, seed: int,
                    device: torch.device | str | None, grid_size: int,
                    ) -> tuple[list[torch.nn.Parameter], torch.device, CountSketch | None, int]:
    """The floating-point parameters, the device, the count sketch (None: exact) and the vector width."""
    params = [p for p in unet.parameters() if p.dtype.is_floating_point]
    if not params:
        raise ValueError("the UNet has no floating-point parameters")
    dev = torch.device(device) if device is not None else params[0].device
    num_params = sum(p.numel() for p in params)
    dim = resolve_projection_dim(projection_dim, num_params, grid_size)
    sketch = CountSketch(params, dim, seed=seed, device=dev) if dim is not None else None
    return params, dev, sketch, dim if dim is not None else num_params


def _flat_gradient(unet: torch.nn.Module, scheduler: Any, params: Sequence[torch.nn.Parameter],
                   sketch: CountSketch | None, x0: torch.Tensor, noise: torch.Tensor, t: int,
                   kw: Mapping[str, Any]) -> torch.Tensor:
    """The denoising-loss gradient at timestep ``t`` on one batch, flattened (``(P,)``) or sketched (``(D,)``)."""
    dev = x0.device
    tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=dev)  # (B,)
    xt = scheduler.add_noise(x0, noise, tt)  # (B, C, H, W)
    target = model_target(scheduler, x0, noise, tt)
    pred = sample_of(call_denoiser(unet, xt, tt, **kw))  # (B, C, H, W)
    loss = torch.nn.functional.mse_loss(pred.float(), target.float())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    if sketch is not None:
        return sketch(grads)  # (D,)
    return torch.cat([
        (g.reshape(-1).float() if g is not None else torch.zeros(p.numel(), device=dev))
        for g, p in zip(grads, params)
    ])  # (P,)


def _find_module(unet: torch.nn.Module, name: str) -> torch.nn.Module:
    modules = dict(unet.named_modules())
    if name not in modules or modules[name] is None:
        import difflib

        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"the UNet has no module named {name!r}{hint}")
    return modules[name]


def activation_similarity(
    unet: torch.nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    scheduler: Any,
    timesteps: Sequence[int],
    *,
    module: str = "mid_block",
    device: torch.device | str | None = None,
    unet_kwargs: UnetKwargs | None = None,
    batch_kwargs: Sequence[Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Per-image cosine similarity of one module's output at each pair of ``timesteps``, averaged.

    Cost: ``len(timesteps) * len(batches)`` forward passes (no backward); memory for one batch
    of activations at every timestep.

    Args:
        module: dotted module name inside the UNet (``mid_block``, ``down_blocks.1``, ...); a
            tuple output uses its first tensor.

    Returns:
        ``(G, G)`` float64 numpy array.
    """
    _check_batch_kwargs(batch_kwargs, batches)
    ts = check_timesteps(timesteps, scheduler)
    target_module = _find_module(unet, module)
    first = next(iter(unet.parameters()), None)
    dev = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
    gram = torch.zeros(len(ts), len(ts), dtype=torch.float64)
    count = 0
    was_training = unet.training
    unet.eval()
    bar = progress_bar(len(ts) * len(batches), "activation similarity", progress)
    try:
        with _captured_output(target_module) as captured, torch.no_grad():
            for bi, (x0, noise) in enumerate(batches):
                x0 = x0.to(dev)  # (B, C, H, W)
                noise = noise.to(dev)
                kw = _kwargs_of_batch(unet_kwargs, batch_kwargs, bi, x0.shape[0], dev)
                A = _unit_activations(unet, scheduler, x0, noise, ts, captured, module, kw, bar)  # (G, B, F)
                gram += torch.einsum("gbf,hbf->gh", A, A).double().cpu()
                count += int(x0.shape[0])
    finally:
        unet.train(was_training)
        bar.close()
    return tidy_similarity((gram / max(count, 1)).numpy())


@contextlib.contextmanager
def _captured_output(target_module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """A list that receives ``target_module``'s flattened output ``(B, F)`` at every call (hook removed on exit)."""
    captured: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _inp: Any, out: Any) -> None:
        t = out[0] if isinstance(out, (tuple, list)) else out
        captured.append(t.detach().flatten(1).float())  # (B, F)

    handle = target_module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _unit_activations(unet: torch.nn.Module, scheduler: Any, x0: torch.Tensor, noise: torch.Tensor,
                      ts: Sequence[int], captured: list[torch.Tensor], module: str,
                      kw: Mapping[str, Any], bar: Any) -> torch.Tensor:
    """``(G, B, F)``: the hooked module's output per timestep and image, each of unit norm."""
    feats = []
    for t in ts:
        captured.clear()
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)  # (B,)
        xt = scheduler.add_noise(x0, noise, tt)
        call_denoiser(unet, xt, tt, **kw)
        if not captured:
            raise ValueError(f"module {module!r} did not run in the UNet's forward pass")
        a = captured[-1]  # (B, F)
        feats.append(a / a.norm(dim=1, keepdim=True).clamp_min(1e-30))
        bar.update(1)
    return torch.stack(feats)


def timestep_similarity(
    unet: torch.nn.Module,
    images: torch.Tensor,
    scheduler_config: Mapping[str, Any] | Any,
    timesteps: Sequence[int],
    *,
    measure: str = "gradient",
    aggregate: str = "per_batch",
    num_batches: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    projection_dim: ProjectionDim = "auto",
    activation_module: str = "mid_block",
    device: torch.device | str | None = None,
    unet_kwargs: UnetKwargs | None = None,
    labels: torch.Tensor | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The ``(G, G)`` similarity matrix of ``timesteps`` with ``measure`` (module docstring).

    ``images`` are what the UNet denoises (latents for a latent model), ``(N, C, H, W)``; the
    fixed batches are drawn from them with ``seed``. Cost: ``len(timesteps) * num_batches``
    passes of ``batch_size`` (forward+backward for ``gradient``, forward for ``activation``).
    ``labels`` ((N,) class labels of ``images``, for a class-conditional UNet): every fixed batch
    is measured with its own images' labels.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown similarity measure {measure!r}; choose one of {', '.join(MEASURES)}")
    scheduler = make_training_scheduler(scheduler_config)
    batches = fixed_batches(images, num_batches, batch_size, seed)
    per_batch = None
    if labels is not None:
        per_batch = [{"class_labels": y} for y in fixed_batch_labels(labels, int(images.shape[0]), num_batches,
                                                                      batch_size, seed)]
    if measure == "gradient":
        return gradient_similarity(unet, batches, scheduler, timesteps, aggregate=aggregate,
                                   projection_dim=projection_dim, seed=seed, device=device,
                                   unet_kwargs=unet_kwargs, batch_kwargs=per_batch, progress=progress)
    return activation_similarity(unet, batches, scheduler, timesteps, module=activation_module, device=device,
                                 unet_kwargs=unet_kwargs, batch_kwargs=per_batch, progress=progress)


def fixed_batch_labels(labels: torch.Tensor, num_images: int, num_batches: int, batch_size: int,
                       seed: int) -> list[torch.Tensor]:
    """The labels of the images of ``fixed_batches(images, num_batches, batch_size, seed)``, batch by batch.

    Replays the index draw of :func:`experts.timestep_batches.fixed_batches` (its first draw
    from the same seeded generator), so label ``i`` of batch ``b`` belongs to image ``i`` of batch ``b``.

    Example:
        >>> images = torch.arange(6.0).view(6, 1, 1, 1)
        >>> from experts.timestep_batches import fixed_batches
        >>> x0 = fixed_batches(images, 2, 2, seed=3)[1][0].flatten().long()
        >>> bool(torch.equal(fixed_batch_labels(torch.arange(6) * 10, 6, 2, 2, seed=3)[1], x0 * 10))
        True
    """
    if labels.shape[0] != num_images:
        raise ValueError(f"labels must have one entry per image: {labels.shape[0]} labels, {num_images} images")
    total = num_batches * batch_size
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(num_images, generator=g)[:total] if num_images >= total else \
        torch.randint(0, num_images, (total,), generator=g)
    y = labels[idx.to(labels.device)].long()
    return [y[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]


def _check_batch_kwargs(batch_kwargs: Sequence[Mapping[str, Any]] | None, batches: Sequence[Any]) -> None:
    if batch_kwargs is not None and len(batch_kwargs) != len(batches):
        raise ValueError(f"batch_kwargs must have one entry per batch: {len(batch_kwargs)} for {len(batches)} batches")


def _kwargs_of_batch(unet_kwargs: UnetKwargs | None, batch_kwargs: Sequence[Mapping[str, Any]] | None, index: int,
                     batch_size: int, device: torch.device) -> dict[str, Any]:
    """The UNet inputs of batch ``index``: the shared ones, then the batch's own (moved to ``device``)."""
    kw = dict(unet_kwargs(batch_size)) if unet_kwargs is not None else {}
    if batch_kwargs is not None:
        kw.update({k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch_kwargs[index].items()})
    return kw
