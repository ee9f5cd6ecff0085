"""The experts folder of a run (``runs/<name>/experts``): its layout and how it is read.

Layout (written by :func:`experts.training.train_experts`)::

    supernet/            the importance-ordered, untrained supernet every expert started from
    expert_<k>/          expert k (ElasticUNet.save_pretrained) with diffnas_expert.json
    intervals.json       the experts' intervals
    manifest.json        what the experts were trained from (base fingerprint, settings, ...)
    checkpoints/         resumable training state per expert (experts.checkpoint)

Example:
    >>> expert_dir("runs/x/experts", 2).name
    'expert_2'
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experts.intervals import Intervals
from search_spaces.errors import UserError

__all__ = [
    "CHECKPOINTS_DIR",
    "EXPERT_META",
    "MANIFEST",
    "SUPERNET_DIR",
    "base_fingerprint",
    "build_supernet",
    "expert_dir",
    "load_experts",
    "load_supernet",
    "quiet_diffusers",
]

MANIFEST = "manifest.json"
EXPERT_META = "diffnas_expert.json"
SUPERNET_DIR = "supernet"
CHECKPOINTS_DIR = "checkpoints"


def expert_dir(out_dir: str | Path, k: int) -> Path:
    """``<out>/expert_<k>``."""
    return Path(out_dir) / f"expert_{k}"


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, shapes, dtypes, bytes): which base experts came from."""
    h = hashlib.sha256()
    for name, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' INFO/WARNING logs (e.g. the "install accelerate" note on every load)."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def build_supernet(base_unet: nn.Module, options: Any = None, importance: str = "magnitude") -> nn.Module:
    """The elastic supernet of ``base_unet`` (a deep copy; channels ordered once by importance)."""
    from search_spaces.elastic_unet import ElasticUNet

    return ElasticUNet(base_unet, options, importance=importance)


def load_supernet(out_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The untrained, importance-ordered supernet all experts started from (``<out>/supernet``)."""
    from search_spaces.elastic_unet import ElasticUNet

    path = Path(out_dir) / SUPERNET_DIR
    if not path.is_dir():
        raise UserError(f"{out_dir} has no {SUPERNET_DIR}/ folder; run `diffnas train-experts` first")
    with quiet_diffusers():
        return ElasticUNet.from_pretrained(path, device=device).eval()


def load_experts(out_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Intervals, list[nn.Module]]:
    """The intervals and the trained supernet experts (full arch) of an experts folder."""
    from search_spaces.elastic_unet import ElasticUNet

    out = Path(out_dir)
    iv_path = out / "intervals.json"
    if not iv_path.is_file():
        raise UserError(f"{out} has no intervals.json: not an experts folder; run `diffnas train-experts` first")
    intervals = Intervals.load(iv_path)
    experts = []
    for k in range(intervals.num_intervals):
        d = expert_dir(out, k)
        if not (d / EXPERT_META).is_file():
            raise UserError(f"expert {k} is not trained yet ({d} is missing); run `diffnas train-experts`")
        with quiet_diffusers():
            experts.append(ElasticUNet.from_pretrained(d, device=device).eval())
    return intervals, experts
