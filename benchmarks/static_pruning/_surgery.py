"""The pruning surgery: one torch-pruning ``MetaPruner`` pass on a deep copy of a diffusers UNet
(:func:`prune_once`; attention pruned per head, the output convolution left alone, diffusers'
bookkeeping attributes synced from the pruned shapes) and the Taylor importance's gradients
(:func:`taylor_gradients`).

Example:
    >>> from diffusers import UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
    ...     layers_per_block=1, norm_num_groups=4, add_attention=False,
    ...     down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    >>> pruned = prune_once(unet, 0.5)
    >>> pruned.conv_in.out_channels < unet.conv_in.out_channels
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["prune_once", "taylor_gradients"]


def _example_inputs(unet: nn.Module) -> dict[str, Any]:
    from search_spaces.macs import unet_example_inputs

    kw = unet_example_inputs(unet, batch_size=1)
    g = torch.Generator().manual_seed(0)
    kw["sample"] = torch.randn(tuple(kw["sample"].shape), generator=g).to(kw["sample"])  # (1,C,H,W)
    return kw


def _attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """``{q/k/v Linear: heads}`` for every diffusers ``Attention`` (self- and cross-attention)."""
    from diffusers.models.attention_processor import Attention

    heads: dict[nn.Module, int] = {}
    for m in model.modules():
        if isinstance(m, Attention):
            for lin in (m.to_q, m.to_k, m.to_v):
                if isinstance(lin, nn.Linear):
                    heads[lin] = int(m.heads)
    return heads


def _ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Layers torch-pruning must leave alone: the output convolution (its channels are the image's)."""
    out = [model.conv_out]
    for name in ("class_embedding", "encoder_hid_proj", "add_embedding"):
        m = getattr(model, name, None)
        if isinstance(m, nn.Module):
            out.append(m)
    return out


def _sync_attributes(model: nn.Module) -> None:
    """Copy pruned shapes into the bookkeeping attributes diffusers reads at run time."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

    for m in model.modules():
        if isinstance(m, (Downsample2D, Upsample2D)):
            conv = getattr(m, "conv", None)
            if isinstance(conv, nn.Conv2d):
                m.channels = conv.in_channels
                m.out_channels = conv.out_channels
            elif isinstance(conv, nn.ConvTranspose2d):  # pragma: no cover - transposed upsample
                m.channels = conv.in_channels
                m.out_channels = conv.out_channels
        elif isinstance(m, ResnetBlock2D):
            m.in_channels = m.conv1.in_channels
            m.out_channels = m.conv2.out_channels
        elif isinstance(m, Attention):
            m.inner_dim = m.to_q.out_features
            m.query_dim = m.to_q.in_features
            if hasattr(m, "inner_kv_dim"):
                m.inner_kv_dim = m.to_k.out_features
            out = m.to_out[0] if isinstance(m.to_out, nn.ModuleList) else None
            if isinstance(out, nn.Linear):
                m.out_dim = out.out_features


def prune_once(
    unet: nn.Module,
    pruning_ratio: float,
    *,
    importance: str = "magnitude",
    gradients: Mapping[str, torch.Tensor] | None = None,
    global_pruning: bool = False,
) -> nn.Module:
    """A pruned deep copy of ``unet`` at torch-pruning's channel ``pruning_ratio`` (0 = none).

    Args:
        importance: ``magnitude`` (L2 of weights) or ``taylor`` (needs ``gradients``: parameter
            name -> accumulated gradient, from :func:`taylor_gradients`).
        global_pruning: rank channels across all layers (per-layer ratios differ, at most 0.9)
            instead of pruning every layer by ``pruning_ratio``.
    """
    import torch_pruning as tp

    if not 0.0 <= pruning_ratio < 1.0:
        raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio}")
    model = copy.deepcopy(unet).eval()
    if pruning_ratio == 0.0:
        return model
    # torch-pruning traces the autograd graph: parameters must require grad (a loaded, frozen
    # model would otherwise give an empty dependency graph and prune nothing)
    model.requires_grad_(True)
    if importance == "taylor":
        if gradients is None:
            raise ValueError("taylor importance needs gradients (see taylor_gradients)")
        for name, p in model.named_parameters():
            g = gradients.get(name)
            p.grad = None if g is None else g.detach().clone().to(p)
        imp = tp.importance.TaylorImportance()
    elif importance == "magnitude":
        imp = tp.importance.MagnitudeImportance(p=2)
    else:
        raise ValueError(f"importance must be 'taylor' or 'magnitude', got {importance!r}")
    with torch.enable_grad():
        pruner = tp.pruner.MetaPruner(
            model, _example_inputs(model), importance=imp, pruning_ratio=float(pruning_ratio),
            num_heads=_attention_heads(model), ignored_layers=_ignored_layers(model),
            global_pruning=bool(global_pruning), max_pruning_ratio=0.9 if global_pruning else 1.0,
        )
        pruner.step()
    model.zero_grad(set_to_none=True)
    _sync_attributes(model)
    return model.eval()


def taylor_gradients(
    unet: nn.Module,
    images: torch.Tensor,
    scheduler_config: Mapping[str, Any],
    *,
    num_batches: int = 4,
    batch_size: int = 32,
    seed: int = 0,
    unet_kwargs: Callable[[int], dict] | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Denoising-loss gradients accumulated over ``num_batches`` seeded batches, timesteps drawn
    uniformly over the whole schedule (Diff-Pruning's Taylor importance uses ``|w * grad|``).

    Args:
        images: training samples (N, C, H, W) in the UNet's input space (latents for LDMs).
        unet_kwargs: ``batch_size -> extra kwargs`` (context of conditional UNets), or None.
        labels: (N,) class labels of ``images`` for a class-conditional UNet (each batch passes
            its images' labels), or None.
    """
    from experts.intervals import Intervals
    from experts.denoising import batch_model_kwargs, denoising_loss, make_batch, training_scheduler

    sched = training_scheduler(scheduler_config)
    whole = Intervals(int(sched.config.num_train_timesteps), ())
    model = copy.deepcopy(unet).train().requires_grad_(True)  # the caller's model may be frozen
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.enable_grad():
        for _ in range(int(num_batches)):
            batch = make_batch(images, whole, 0, int(batch_size), gen, labels=labels).to(device)
            kw = unet_kwargs(len(batch)) if unet_kwargs is not None else None
            kw = batch_model_kwargs(batch, kw)
            loss = denoising_loss(model, batch.x0, batch.t, batch.noise, sched, model_kwargs=kw)
            loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
