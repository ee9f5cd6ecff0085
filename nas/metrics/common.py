"""Constants and small helpers shared by the :mod:`nas.metrics` modules.

Example:
    >>> import torch
    >>> quantize_uint8(torch.tensor([-1.0, 0.0, 1.0])).tolist()
    [0, 128, 255]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nas.digit_classifier import sha256_file

INCEPTION_ENV = "DIFFNAS_INCEPTION_WEIGHTS"
ALLOW_DOWNLOAD_ENV = "DIFFNAS_ALLOW_DOWNLOAD"
INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILENAME
)
INCEPTION_OPTION = "evaluation.inception_weights"
EXTRACTOR_KINDS = ("digits", "inception")
REFERENCE_SUBDIR = "fid_reference"
INCEPTION_SUBDIR = "inception"


def quantize_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 as PNG saving would: ``round((x + 1) * 127.5)`` clamped."""
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def check_images(images: Tensor, what: str) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a (N, C, H, W) tensor with C in (1, 3), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{what} must be float in [-1, 1], got {images.dtype}")




def progress_bar(it: Any, desc: str, total: int) -> Any:
    if total <= 4:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, leave=False, disable=None)
