"""Tiny class-conditional models shared by the conditional-path tests."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel


def tiny_unet(classes: int | None = 3, seed: int = 0) -> UNet2DModel:
    """An 8x8 one-channel UNet with ``classes`` + 1 class embeddings (the last: null), or none."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False,
                       num_class_embeds=None if classes is None else classes + 1)
