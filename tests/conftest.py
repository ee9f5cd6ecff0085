"""Shared fixtures: tiny diffusers UNets built in the test (never a download), seeded locally."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# tests and CI never download: the hub and clean-fid's Inception weights are off for the whole
# session (tests/nas/test_downloads.py lifts this per test, against local servers only)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DIFFNAS_OFFLINE"] = "1"
# one thread: on the 2-core CI machine, several OpenMP threads per process contend badly
torch.set_num_threads(1)


def _seeded(fn):
    def build():
        torch.manual_seed(0)
        model = fn()
        # diffusers zero-initialises some output layers; randomise so tests can see differences
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        return model.eval()

    return build


@_seeded
def build_tiny_unet():
    """UNet2DModel without any attention: two levels, 2 resnets per down block."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=2, norm_num_groups=4, add_attention=False,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )


@_seeded
def build_tiny_attn_unet():
    """UNet2DModel with self-attention in the lower level and the mid block."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        layers_per_block=2, norm_num_groups=4, attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )


@_seeded
def build_tiny_cond_unet():
    """UNet2DConditionModel with cross-attention transformer blocks (text-to-image layout)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=2, norm_num_groups=4, cross_attention_dim=12, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )


UNET_BUILDERS = {
    "unet": build_tiny_unet,
    "attn_unet": build_tiny_attn_unet,
    "cond_unet": build_tiny_cond_unet,
}


def unet_inputs(model, batch_size: int = 2, seed: int = 0) -> dict:
    """Keyword inputs for one UNet call (sample, timestep, and text states if conditional)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    kw = {
        "sample": torch.randn(batch_size, cfg.in_channels, size, size, generator=g),
        "timestep": torch.tensor([10 + 37 * i for i in range(batch_size)]),
    }
    if getattr(cfg, "cross_attention_dim", None):
        kw["encoder_hidden_states"] = torch.randn(batch_size, 5, cfg.cross_attention_dim, generator=g)
    return kw


@pytest.fixture(params=sorted(UNET_BUILDERS))
def any_unet(request):
    """Each of the three tiny UNet configurations in turn."""
    return UNET_BUILDERS[request.param]()


@pytest.fixture
def tiny_unet():
    return build_tiny_unet()


@pytest.fixture
def tiny_attn_unet():
    return build_tiny_attn_unet()


@pytest.fixture
def tiny_cond_unet():
    return build_tiny_cond_unet()
