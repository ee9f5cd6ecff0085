"""Feature extractors for FID/KID: the base class, the digits classifier, clean-fid's Inception.

:func:`build_extractor` builds one by name (``"digits"`` or ``"inception"``); see
:mod:`nas.metrics` for the conventions.
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nas.metrics.common import (
    EXTRACTOR_KINDS,
    INCEPTION_FILENAME,
    INCEPTION_URL,
    check_images,
    progress_bar,
    sha256_file,
    quantize_uint8,
)
from nas.metrics.inception_weights import folder_with_canonical_name, resolve_inception_weights
from search_spaces.errors import UserError


# --------------------------------------------------------------------------- extractors


class FeatureExtractor(ABC):
    """Maps images to feature vectors for FID/KID.

    ``name`` ("digits" or "inception") and ``feature_dim`` describe it; ``fingerprint``
    identifies its weights (part of the reference-cache key). Calling it on a float tensor in
    [-1, 1], (N, C, H, W) with C in {1, 3}, returns a float32 array (N, feature_dim), computed
    in batches of ``batch_size`` on ``device``.

    For clean-fid's own pipelines (:func:`fid_folders`), ``cleanfid_model`` is the callable to
    pass as ``custom_feat_extractor`` (it takes what clean-fid's loaders produce: float NCHW in
    [0, 255], already resized) and ``cleanfid_resize`` the ``custom_fn_resize`` (None means
    clean-fid's default "clean" resize).
    """

    name: str = ""
    feature_dim: int = 0

    def __init__(self, *, device: torch.device | str, batch_size: int, fingerprint: str) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.fingerprint = fingerprint

    # subclasses implement these two
    @abstractmethod
    def _prepare(self, images_u8: Tensor) -> Tensor:
        """(B, C, H, W) uint8 -> float NCHW in [0, 255], the model's input size."""

    @property
    @abstractmethod
    def cleanfid_model(self) -> Callable[[Tensor], Tensor]:
        """The network clean-fid calls on prepared batches: (B, C, H, W) -> (B, D) features."""

    @property
    def cleanfid_resize(self) -> Callable[[np.ndarray], np.ndarray] | None:
        return None

    def __call__(self, images: Tensor) -> np.ndarray:
        from cleanfid.fid import get_batch_features

        check_images(images, "images")
        n = images.shape[0]
        chunks: list[np.ndarray] = []
        starts = range(0, n, self.batch_size)
        for start in progress_bar(starts, f"{self.name} features", len(starts)):
            batch = images[start : start + self.batch_size].detach().cpu()
            inputs = self._prepare(quantize_uint8(batch))  # (B, C', H', W') float in [0, 255]
            feats = get_batch_features(inputs, self.cleanfid_model, self.device)  # (B, D)
            chunks.append(np.asarray(feats, dtype=np.float32).reshape(len(batch), -1))
        if not chunks:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        out = np.concatenate(chunks, axis=0)  # (N, D)
        if out.shape[1] != self.feature_dim:
            raise RuntimeError(f"{self.name} extractor gave {out.shape[1]}-d features, expected {self.feature_dim}")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, feature_dim={self.feature_dim}, device={self.device})"


class DigitsFeatureExtractor(FeatureExtractor):
    """Penultimate features of the project's digit classifier (see :mod:`nas.digit_classifier`).

    Colour input is averaged to grey; other sizes are resized (bilinear, antialiased) to the
    classifier's 16x16.
    """

    name = "digits"

    def __init__(self, classifier: Any, *, device: torch.device | str, batch_size: int = 256) -> None:
        super().__init__(device=device, batch_size=batch_size, fingerprint=classifier.weights_sha256 or "untracked")
        self.classifier = classifier.to(self.device).eval()
        self.feature_dim = int(classifier.feature_dim)
        self.image_size = int(classifier.config.image_size)
        self.test_accuracy = float(classifier.test_accuracy)

    def _prepare(self, images_u8: Tensor) -> Tensor:
        x = images_u8.float()  # (B, C, H, W) in [0, 255]
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            ).clamp(0.0, 255.0)
        return x  # (B, 1, S, S)

    @property
    def cleanfid_model(self) -> Callable[[Tensor], Tensor]:
        clf = self.classifier

        def model_fn(x: Tensor) -> Tensor:  # (B, 1, S, S) in [0, 255] -> (B, D)
            return clf.features(x.float() / 127.5 - 1.0)

        return model_fn

    @property
    def cleanfid_resize(self) -> Callable[[np.ndarray], np.ndarray]:
        def fn_resize(img: np.ndarray) -> np.ndarray:  # (H, W, C) uint8 -> (S, S, 1) float32
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]  # (1, C, H, W)
            out = self._prepare(t)[0]  # (1, S, S)
            return out.permute(1, 2, 0).numpy().astype(np.float32)

        return fn_resize


class InceptionFeatureExtractor(FeatureExtractor):
    """clean-fid's InceptionV3 (``InceptionV3W``), mode "clean": PIL bicubic resize to 299."""

    name = "inception"
    feature_dim = 2048

    def __init__(self, weights_file: Path, *, device: torch.device | str, cache_dir: Path, batch_size: int = 32) -> None:
        super().__init__(device=device, batch_size=batch_size, fingerprint=sha256_file(weights_file)[:16])
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        folder = folder_with_canonical_name(weights_file, Path(cache_dir))
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=FutureWarning)
                # download=False: clean-fid only loads the file; TorchScript, so only the official one
                model = InceptionV3W(str(folder), download=False, resize_inside=False)
        except (RuntimeError, AttributeError, ValueError) as exc:
            raise UserError(
                f"could not load Inception weights from {weights_file}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
                f"(expected clean-fid's {INCEPTION_FILENAME} from {INCEPTION_URL})"
            ) from None
        self.model = model.to(self.device).eval()
        self.weights_file = Path(weights_file)
        self._resize = build_resizer("clean")

    def _prepare(self, images_u8: Tensor) -> Tensor:
        x = images_u8
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB
        hwc = x.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3) uint8
        resized = [self._resize(img) for img in hwc]  # each (299, 299, 3) float32 in [0, 255]
        return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()  # (B, 3, 299, 299)

    @property
    def cleanfid_model(self) -> Callable[[Tensor], Tensor]:
        return self.model


# --------------------------------------------------------------------------- building


def resolve_extractor_kind(kind: str, dataset: str) -> str:
    """Resolve ``"auto"``: the digits classifier for the ``digits`` dataset, else Inception.

    Example:
        >>> resolve_extractor_kind("auto", "digits"), resolve_extractor_kind("auto", "/data/ffhq")
        ('digits', 'inception')
    """
    if kind == "auto":
        return "digits" if dataset == "digits" else "inception"
    if kind not in EXTRACTOR_KINDS:
        raise UserError(f"unknown feature extractor {kind!r}; choose one of: auto, {', '.join(EXTRACTOR_KINDS)}")
    return kind


def check_extractor_available(
    kind: str, *, cache_dir: Path, inception_weights: str | os.PathLike[str] | None = None
) -> Path | None:
    """Fail fast (before sampling) when the extractor cannot be built; returns the Inception file.

    ``"digits"`` always works (the classifier trains offline), so this returns None for it.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> check_extractor_available("digits", cache_dir=Path(tempfile.mkdtemp())) is None
        True
    """
    if kind not in EXTRACTOR_KINDS:
        raise UserError(f"unknown feature extractor {kind!r}; choose one of: {', '.join(EXTRACTOR_KINDS)}")
    if kind == "inception":
        return resolve_inception_weights(inception_weights, cache_dir)
    return None


def build_extractor(
    kind: str,
    *,
    device: torch.device | str,
    cache_dir: Path,
    inception_weights: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
) -> FeatureExtractor:
    """Build the ``"digits"`` or ``"inception"`` feature extractor (``"auto"``: see
    :func:`resolve_extractor_kind`, which the caller applies).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> ext = build_extractor("digits", device="cpu", cache_dir=Path(tempfile.mkdtemp()))
        >>> ext.name, ext.feature_dim
        ('digits', 64)
    """
    cache_dir = Path(cache_dir)
    weights = check_extractor_available(kind, cache_dir=cache_dir, inception_weights=inception_weights)
    if kind == "digits":
        from nas.digit_classifier import load_or_train_digit_classifier

        clf = load_or_train_digit_classifier(cache_dir, device)
        return DigitsFeatureExtractor(clf, device=device, batch_size=batch_size or 256)
    assert weights is not None
    return InceptionFeatureExtractor(weights, device=device, cache_dir=cache_dir, batch_size=batch_size or 32)
