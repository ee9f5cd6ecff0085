"""MACs of a diffusers UNet: example inputs shaped from its config, and one-call counts.

:func:`unet_example_inputs` builds the keyword inputs of one UNet call (sample, timestep, and
the conditioning the config asks for); :func:`unet_macs_by_module` and
:func:`count_unet_macs` count one call on them with :func:`search_spaces.macs.count_macs`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from search_spaces.errors import UserError
from search_spaces._macs_count import MacsCount, count_macs

__all__ = ["count_unet_macs", "unet_example_inputs", "unet_macs_by_module"]


def _model_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in module.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def unet_example_inputs(
    unet: nn.Module,
    batch_size: int = 1,
    encoder_seq_len: int = 77,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Keyword inputs for one call of a diffusers UNet, shaped from its config.

    ``sample``: zeros of ``(batch_size, in_channels, H, W)`` from ``config.sample_size`` (an int
    or an ``(H, W)`` pair); ``timestep``: a long tensor of shape ``(batch_size,)``;
    ``encoder_hidden_states`` (conditional UNets only): zeros of
    ``(batch_size, encoder_seq_len, D)``, ``D`` = ``encoder_hid_dim`` if set, else
    ``cross_attention_dim``; ``class_labels`` and SDXL-style ``added_cond_kwargs`` when the
    config asks for them. Inputs are placed on ``device`` (default: the model's).

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
        ...     block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1,
        ...     down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
        >>> tuple(unet_example_inputs(unet, batch_size=2)["sample"].shape)
        (2, 1, 8, 8)
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    cfg = unet.config
    model_device, dtype = _model_device_dtype(unet)
    device = torch.device(device) if device is not None else model_device
    size = getattr(cfg, "sample_size", None)
    if size is None:
        raise UserError("the UNet config has no sample_size; pass the inputs to count_macs")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))
    inputs: dict[str, Any] = {
        "sample": torch.zeros(batch_size, cfg.in_channels, height, width, device=device,
                              dtype=dtype),
        "timestep": torch.full((batch_size,), 1, dtype=torch.long, device=device),
    }
    params = inspect.signature(unet.forward).parameters
    if "encoder_hidden_states" in params:
        width_ctx = getattr(cfg, "encoder_hid_dim", None) or getattr(cfg, "cross_attention_dim")
        if isinstance(width_ctx, (list, tuple)):
            width_ctx = width_ctx[0]
        inputs["encoder_hidden_states"] = torch.zeros(
            batch_size, encoder_seq_len, int(width_ctx), device=device, dtype=dtype)
    if getattr(unet, "class_embedding", None) is not None:
        inputs["class_labels"] = _class_labels(unet, batch_size, device, dtype)
    addition = getattr(cfg, "addition_embed_type", None)
    if addition == "text_time":
        time_ids = 6  # SDXL: original size, crop, target size
        text_dim = cfg.projection_class_embeddings_input_dim - cfg.addition_time_embed_dim * time_ids
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(batch_size, text_dim, device=device, dtype=dtype),
            "time_ids": torch.zeros(batch_size, time_ids, device=device, dtype=dtype),
        }
    elif addition not in (None, "text"):
        raise UserError(f"addition_embed_type={addition!r} needs inputs this helper does not "
                        "build; pass them to count_macs(unet, kwargs) yourself")
    return inputs


def _class_labels(unet: nn.Module, batch_size: int, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    kind = getattr(unet.config, "class_embed_type", None)
    if kind in (None, "timestep"):
        return torch.zeros(batch_size, dtype=torch.long, device=device)
    if kind == "projection":
        dim = unet.config.projection_class_embeddings_input_dim
        return torch.zeros(batch_size, dim, device=device, dtype=dtype)
    if kind == "identity":
        dim = unet.time_embedding.linear_2.out_features
        return torch.zeros(batch_size, dim, device=device, dtype=dtype)
    raise UserError(f"class_embed_type={kind!r} needs inputs this helper does not build; "
                    "pass them to count_macs(unet, kwargs) yourself")


def unet_macs_by_module(unet: nn.Module, batch_size: int = 1,
                        encoder_seq_len: int = 77) -> MacsCount:
    """MACs of one call of a diffusers UNet on :func:`unet_example_inputs`, per module.

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
        ...     block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1,
        ...     add_attention=False,
        ...     down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
        >>> c = unet_macs_by_module(unet)
        >>> c.by_module["conv_in"]  # 4 * 1 * 3 * 3 weights at 8 x 8 positions
        2304
    """
    kwargs = unet_example_inputs(unet, batch_size=batch_size, encoder_seq_len=encoder_seq_len)
    return count_macs(unet, kwargs, by_module=True)


def count_unet_macs(unet: nn.Module, batch_size: int = 1, encoder_seq_len: int = 77) -> int:
    """MACs of one call of a diffusers UNet (per image with ``batch_size=1``).

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
        ...     block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1,
        ...     down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
        >>> count_unet_macs(unet, batch_size=2) == 2 * count_unet_macs(unet)
        True
    """
    kwargs = unet_example_inputs(unet, batch_size=batch_size, encoder_seq_len=encoder_seq_len)
    return count_macs(unet, kwargs, by_module=False).total
