"""Reference features for FID/KID, cached per dataset, images and extractor as ``.npz``."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nas.metrics.common import REFERENCE_SUBDIR, check_images
from nas.metrics.extractors import FeatureExtractor

logger = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "dataset"


def images_hash(images: Tensor) -> str:
    """SHA-256 (hex) of the images' float32 values and shape: the reference-cache key part."""
    x = images.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


def reference_cache_path(dataset_key: str, images: Tensor, extractor: FeatureExtractor, cache_dir: Path) -> Path:
    """``<cache_dir>/fid_reference/<dataset>-<extractor>-n<N>-<hash>.npz``; the hash covers the
    images, the extractor's name and weights fingerprint."""
    h = hashlib.sha256(
        f"{dataset_key}|{extractor.name}|{extractor.fingerprint}|{images_hash(images)}".encode()
    ).hexdigest()[:16]
    name = f"{_slug(dataset_key)}-{extractor.name}-n{images.shape[0]}-{h}.npz"
    return Path(cache_dir) / REFERENCE_SUBDIR / name


def reference_features(dataset_key: str, images: Tensor, extractor: FeatureExtractor, cache_dir: Path) -> np.ndarray:
    """Features (N, D) of the reference images, cached as .npz and reused when nothing changed.

    The file holds ``feats`` (float32), clean-fid-style ``mu``/``sigma`` and a few metadata
    strings; it is read with ``allow_pickle=False``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from nas.digit_classifier import load_digits_tensor
        >>> from nas.metrics import build_extractor
        >>> cache = Path(tempfile.mkdtemp())
        >>> ext = build_extractor("digits", device="cpu", cache_dir=cache)
        >>> images, _ = load_digits_tensor()
        >>> reference_features("digits", images[:100], ext, cache).shape
        (100, 64)
    """
    check_images(images, "reference images")
    path = reference_cache_path(dataset_key, images, extractor, cache_dir)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                feats = np.asarray(data["feats"], dtype=np.float32)
            if feats.shape == (images.shape[0], extractor.feature_dim):
                logger.info("reference features read from %s", path)
                return feats
            logger.warning("cached reference features %s have shape %s; recomputing", path, feats.shape)
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("unreadable reference cache %s (%s); recomputing", path, exc)
    feats = extractor(images)  # (N, D)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(
            tmp,
            feats=feats,
            mu=feats.mean(axis=0),
            sigma=np.cov(feats, rowvar=False) if len(feats) > 1 else np.zeros((feats.shape[1],) * 2),
            dataset_key=np.array(dataset_key),
            extractor=np.array(extractor.name),
            fingerprint=np.array(extractor.fingerprint),
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("reference features (%d x %d, %s) cached at %s", *feats.shape, extractor.name, path)
    return feats
