"""Sample quality: FID and KID through clean-fid, with cached reference features.

Everything numeric goes through clean-fid 0.1.35's own functions:
``cleanfid.fid.frechet_distance`` (FID from mean/covariance), ``cleanfid.fid.kernel_distance``
(KID), ``cleanfid.fid.get_batch_features`` (running a feature model on a batch),
``cleanfid.resize.build_resizer("clean")`` (its "clean" PIL-bicubic resize to 299x299) and
``cleanfid.inception_torchscript.InceptionV3W`` (its Inception network). Folders of image files
go through clean-fid's folder loader ``get_folder_features`` with the extractor plugged in, as
``compute_fid(fdir1, fdir2, custom_feat_extractor=...)`` does (:func:`fid_folders`).

Two feature extractors (:func:`build_extractor`):

- ``"digits"``: the project's small digit classifier (:mod:`nas.digit_classifier`), 64-d
  penultimate features; trained once offline in seconds; for the embedded ``digits`` data.
  Its FID values are *not* comparable with Inception FIDs from papers.
- ``"inception"``: clean-fid's InceptionV3 (2048-d pool features, mode "clean"). Its weights
  are the TorchScript file ``inception-2015-12-05.pt`` that clean-fid downloads. Nothing is
  downloaded here unless ``DIFFNAS_ALLOW_DOWNLOAD=1``: give the file with the
  ``inception_weights`` argument (config ``evaluation.inception_weights``) or the environment
  variable ``DIFFNAS_INCEPTION_WEIGHTS``. The file is loaded with ``torch.jit.load`` inside
  clean-fid, exactly as clean-fid does; a TorchScript archive is code, so only point this at
  the official file.

Conventions, stated once: images are float tensors in [-1, 1], NCHW; before feature
extraction they are quantised to 8 bits (``round((x + 1) * 127.5)``), exactly what saving them
as PNG and running clean-fid on the folder would do, so :func:`compute_quality` and
:func:`fid_folders` agree. Grey images are repeated to 3 channels for Inception. KID is
clean-fid's raw value (polynomial-kernel unbiased MMD^2 averaged over subsets), *not* the
x1000 that some papers print; its random subsets are seeded so it is reproducible.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from nas.digit_classifier import load_digits_tensor
    >>> cache = Path(tempfile.mkdtemp())
    >>> images, _ = load_digits_tensor()
    >>> ext = build_extractor("digits", device="cpu", cache_dir=cache)
    >>> ref = reference_features("digits-16", images, ext, cache)
    >>> res = compute_quality(images[:500], ref, ext)
    >>> res.extractor, res.num_generated, res.num_reference, res.feature_dim
    ('digits', 500, 1797, 64)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import math
import os
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from search_spaces.errors import UserError

logger = logging.getLogger(__name__)

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
# where clean-fid itself downloads the file on Linux/macOS (cleanfid.features.feature_extractor)
_CLEANFID_DEFAULT_FOLDER = Path("/tmp")


# --------------------------------------------------------------------------- extractors


class FeatureExtractor:
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
    def _prepare(self, images_u8: Tensor) -> Tensor:
        """(B, C, H, W) uint8 -> float NCHW in [0, 255], the model's input size."""
        raise NotImplementedError

    @property
    def cleanfid_model(self) -> Callable[[Tensor], Tensor]:
        raise NotImplementedError

    @property
    def cleanfid_resize(self) -> Callable[[np.ndarray], np.ndarray] | None:
        return None

    def __call__(self, images: Tensor) -> np.ndarray:
        from cleanfid.fid import get_batch_features

        _check_images(images, "images")
        n = images.shape[0]
        chunks: list[np.ndarray] = []
        starts = range(0, n, self.batch_size)
        for start in _progress(starts, f"{self.name} features", len(starts)):
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
        super().__init__(device=device, batch_size=batch_size, fingerprint=_sha256_file(weights_file)[:16])
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        folder = _folder_with_canonical_name(weights_file, Path(cache_dir))
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


def _missing_inception_message() -> str:
    return (
        f"Inception weights for FID are not available offline: set {INCEPTION_ENV}=/path/to/{INCEPTION_FILENAME} "
        f"or pass --set {INCEPTION_OPTION}=/path/to/{INCEPTION_FILENAME} "
        f"(download it on a machine with network from {INCEPTION_URL}), "
        f"or set {ALLOW_DOWNLOAD_ENV}=1 to let clean-fid download it"
    )


def _as_weights_file(value: str | os.PathLike[str], source: str) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / INCEPTION_FILENAME
    if not path.is_file():
        raise UserError(f"Inception weights file not found: {path} (from {source}); {_missing_inception_message()}")
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"Inception weights file {path} (from {source}) is not a TorchScript archive; "
            f"expected clean-fid's {INCEPTION_FILENAME} from {INCEPTION_URL}"
        )
    return path


def resolve_inception_weights(inception_weights: str | os.PathLike[str] | None, cache_dir: Path) -> Path:
    """Find ``inception-2015-12-05.pt`` without touching the network (unless allowed).

    Order: the ``inception_weights`` argument (a file, or a folder holding the file); the
    ``DIFFNAS_INCEPTION_WEIGHTS`` environment variable; ``<cache_dir>/inception/``; the folder
    clean-fid downloads to (``/tmp``); then, only with ``DIFFNAS_ALLOW_DOWNLOAD=1``, clean-fid's
    own download into ``<cache_dir>/inception/``. Otherwise a one-line :class:`UserError` says
    how to provide it. Cheap: call it before any sampling.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> try:
        ...     resolve_inception_weights("/no/such/file.pt", Path(tempfile.mkdtemp()))
        ... except UserError as e:
        ...     "not found" in str(e)
        True
    """
    if inception_weights is not None and str(inception_weights) != "":
        return _as_weights_file(inception_weights, f"--set {INCEPTION_OPTION}")
    env = os.environ.get(INCEPTION_ENV, "")
    if env:
        return _as_weights_file(env, f"${INCEPTION_ENV}")
    for folder in (Path(cache_dir) / INCEPTION_SUBDIR, _CLEANFID_DEFAULT_FOLDER):
        candidate = folder / INCEPTION_FILENAME
        if candidate.is_file() and zipfile.is_zipfile(candidate):
            logger.info("using Inception weights found at %s", candidate)
            return candidate
    if os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1":
        return _download_inception(Path(cache_dir) / INCEPTION_SUBDIR)
    raise UserError(_missing_inception_message())


def _download_inception(folder: Path) -> Path:
    from cleanfid.downloads_helper import check_download_inception

    folder.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s with clean-fid into %s", INCEPTION_FILENAME, folder)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        try:
            downloaded = Path(check_download_inception(fpath=tmp))
        except OSError as exc:  # URLError is an OSError
            raise UserError(f"could not download {INCEPTION_URL} ({exc}); {_missing_inception_message()}") from None
        final = folder / INCEPTION_FILENAME
        os.replace(downloaded, final)
    return final


def _folder_with_canonical_name(weights_file: Path, cache_dir: Path) -> Path:
    """clean-fid's InceptionV3W loads ``<folder>/inception-2015-12-05.pt``: give it such a folder."""
    weights_file = weights_file.resolve()
    if weights_file.name == INCEPTION_FILENAME:
        return weights_file.parent
    tag = hashlib.sha256(str(weights_file).encode()).hexdigest()[:12]
    folder = cache_dir / INCEPTION_SUBDIR / f"link-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / INCEPTION_FILENAME
    if not (link.is_symlink() and link.resolve() == weights_file):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(weights_file)
    return folder


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


# --------------------------------------------------------------------------- reference cache


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
        >>> cache = Path(tempfile.mkdtemp())
        >>> ext = build_extractor("digits", device="cpu", cache_dir=cache)
        >>> images, _ = load_digits_tensor()
        >>> reference_features("digits", images[:100], ext, cache).shape
        (100, 64)
    """
    _check_images(images, "reference images")
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


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class QualityResult:
    """FID and KID of one set of generated images against the reference features.

    ``kid`` is clean-fid's raw KID (multiply by 1000 for the "KID x 10^3" some papers print).
    """

    fid: float
    kid: float
    extractor: str
    num_generated: int
    num_reference: int
    feature_dim: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for reports: the numbers, the extractor and the sample counts."""
        return (
            f"FID {self.fid:.3f}, KID {self.kid:.5f} ({self.extractor} features, {self.feature_dim}-d; "
            f"{self.num_generated} generated vs {self.num_reference} reference images)"
        )


def frechet_distance_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two feature sets via clean-fid's ``frechet_distance`` on mean/covariance."""
    from cleanfid.fid import frechet_distance

    mu1, sigma1 = np.mean(feats1, axis=0), np.cov(feats1, rowvar=False)
    mu2, sigma2 = np.mean(feats2, axis=0), np.cov(feats2, rowvar=False)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # clean-fid prints (and scipy warns) when the covariance product is singular
        try:
            fid = frechet_distance(mu1, sigma1, mu2, sigma2)
        except TypeError as exc:
            if "disp" not in str(exc):
                raise
            fid = _frechet_distance_without_disp(mu1, sigma1, mu2, sigma2)
    notes = [captured.getvalue().strip()] + [str(w.message) for w in caught]
    if any(notes):
        logger.info("clean-fid frechet_distance: %s", "; ".join(n for n in notes if n))
    return float(np.real(fid))


def _frechet_distance_without_disp(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """clean-fid 0.1.35's ``frechet_distance``, line for line, for SciPy >= 1.18.

    clean-fid calls ``scipy.linalg.sqrtm(..., disp=False)``; SciPy 1.18 removed ``disp`` (1.17
    deprecates it), so clean-fid's function raises TypeError there. Only the sqrtm call differs.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        logger.info("fid calculation produces singular product; adding %s to diagonal of cov estimates", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def kernel_distance_seeded(
    ref_feats: np.ndarray, gen_feats: np.ndarray, *, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
    """clean-fid's ``kernel_distance`` with its (global numpy) subset sampling seeded; the
    global numpy random state is restored afterwards."""
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return float(kernel_distance(ref_feats, gen_feats, num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


def quality_from_features(
    gen_feats: np.ndarray,
    ref_feats: np.ndarray,
    *,
    extractor: str,
    kid_subset_size: int = 1000,
    kid_num_subsets: int = 100,
    kid_seed: int = 0,
) -> QualityResult:
    """FID and KID from precomputed features (both (N, D), same D, N >= 2).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(200, 8)), rng.normal(size=(300, 8))
        >>> r = quality_from_features(a, b, extractor="toy")
        >>> r.fid < 0.5, abs(r.kid) < 0.05
        (True, True)
    """
    gen_feats, ref_feats = np.asarray(gen_feats), np.asarray(ref_feats)
    if gen_feats.ndim != 2 or ref_feats.ndim != 2 or gen_feats.shape[1] != ref_feats.shape[1]:
        raise ValueError(f"feature shapes do not match: generated {gen_feats.shape}, reference {ref_feats.shape}")
    if gen_feats.shape[0] < 2 or ref_feats.shape[0] < 2:
        raise ValueError(
            f"FID/KID need at least 2 images per side, got {gen_feats.shape[0]} generated, {ref_feats.shape[0]} reference"
        )
    dim = gen_feats.shape[1]
    if gen_feats.shape[0] <= dim:
        logger.warning(
            "FID with %d generated images and %d-d features: covariance is singular, FID is biased upwards",
            gen_feats.shape[0],
            dim,
        )
    fid = frechet_distance_from_features(gen_feats, ref_feats)
    kid = kernel_distance_seeded(
        ref_feats, gen_feats, num_subsets=kid_num_subsets, max_subset_size=kid_subset_size, seed=kid_seed
    )
    return QualityResult(
        fid=fid,
        kid=kid,
        extractor=extractor,
        num_generated=int(gen_feats.shape[0]),
        num_reference=int(ref_feats.shape[0]),
        feature_dim=int(dim),
    )


def compute_quality(
    generated: Tensor,
    reference_feats: np.ndarray,
    extractor: FeatureExtractor,
    *,
    kid_subset_size: int = 1000,
    kid_num_subsets: int = 100,
    kid_seed: int = 0,
) -> QualityResult:
    """FID (clean-fid ``frechet_distance``) and KID (clean-fid ``kernel_distance``, raw) of
    ``generated`` (float [-1, 1], NCHW) against ``reference_feats`` from :func:`reference_features`.

    KID uses subsets of ``min(kid_subset_size, N_gen, N_ref)`` images, ``kid_num_subsets`` times,
    seeded by ``kid_seed``.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from nas.digit_classifier import load_digits_tensor
        >>> cache = Path(tempfile.mkdtemp())
        >>> ext = build_extractor("digits", device="cpu", cache_dir=cache)
        >>> images, _ = load_digits_tensor()
        >>> ref = reference_features("digits", images[:900], ext, cache)
        >>> good = compute_quality(images[900:], ref, ext).fid
        >>> noise = compute_quality(torch.rand(897, 1, 16, 16) * 2 - 1, ref, ext).fid
        >>> good < noise
        True
    """
    if reference_feats.ndim != 2 or reference_feats.shape[1] != extractor.feature_dim:
        raise ValueError(
            f"reference features {reference_feats.shape} do not come from the {extractor.name} extractor "
            f"({extractor.feature_dim}-d)"
        )
    gen_feats = extractor(generated)  # (N, D)
    return quality_from_features(
        gen_feats,
        reference_feats,
        extractor=extractor.name,
        kid_subset_size=kid_subset_size,
        kid_num_subsets=kid_num_subsets,
        kid_seed=kid_seed,
    )


def _t_interval(values: Sequence[float], confidence: float) -> tuple[float, float | None, float | None]:
    """mean, sample std, half-width of the two-sided t interval (None for fewer than 2 values)."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if len(arr) < 2:
        return mean, None, None
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=len(arr) - 1) * std / math.sqrt(len(arr)))
    return mean, std, half


def quality_with_ci(results: Sequence[QualityResult], confidence: float = 0.95) -> dict[str, Any]:
    """Mean and two-sided Student-t confidence interval of FID and KID over sampling seeds.

    All results must share extractor and sample counts. Keys: ``num_seeds``, ``extractor``,
    ``num_generated``, ``num_reference``, ``feature_dim``, ``confidence`` and, for ``m`` in
    (fid, kid): ``m_mean``, ``m_std`` (ddof=1), ``m_ci_halfwidth``, ``m_ci_low``, ``m_ci_high``,
    ``m_values``. With one seed the std and interval entries are None.

    Example:
        >>> rs = [QualityResult(f, 0.01, "digits", 100, 1797, 64) for f in (10.0, 12.0, 11.0)]
        >>> s = quality_with_ci(rs)
        >>> s["fid_mean"], round(s["fid_ci_halfwidth"], 3)
        (11.0, 2.484)
    """
    if not results:
        raise ValueError("quality_with_ci needs at least one result")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    first = results[0]
    for r in results[1:]:
        if (r.extractor, r.num_generated, r.num_reference, r.feature_dim) != (
            first.extractor,
            first.num_generated,
            first.num_reference,
            first.feature_dim,
        ):
            raise ValueError(
                "cannot pool quality results with different extractors or sample counts: "
                f"{first.describe()} vs {r.describe()}"
            )
    out: dict[str, Any] = {
        "num_seeds": len(results),
        "extractor": first.extractor,
        "num_generated": first.num_generated,
        "num_reference": first.num_reference,
        "feature_dim": first.feature_dim,
        "confidence": confidence,
    }
    for metric in ("fid", "kid"):
        values = [float(getattr(r, metric)) for r in results]
        mean, std, half = _t_interval(values, confidence)
        out[f"{metric}_mean"] = mean
        out[f"{metric}_std"] = std
        out[f"{metric}_ci_halfwidth"] = half
        out[f"{metric}_ci_low"] = None if half is None else mean - half
        out[f"{metric}_ci_high"] = None if half is None else mean + half
        out[f"{metric}_values"] = values
    return out


def folder_features(fdir: str | os.PathLike[str], extractor: FeatureExtractor) -> np.ndarray:
    """Features (N, D) of every image file in a folder through clean-fid's own loader
    (``cleanfid.fid.get_folder_features``: its file list, RGB decoding and resize), with this
    extractor plugged in as the feature model (CPU-friendly: ``num_workers=0``)."""
    from cleanfid.fid import get_folder_features

    if not Path(fdir).is_dir():
        raise UserError(f"image folder not found: {fdir}")
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        feats = get_folder_features(
            str(fdir),
            extractor.cleanfid_model,
            num_workers=0,
            batch_size=extractor.batch_size,
            device=extractor.device,
            mode="clean",
            custom_fn_resize=extractor.cleanfid_resize,
            verbose=False,
        )
    feats = np.asarray(feats, dtype=np.float32)
    if feats.shape[0] == 0:
        raise UserError(f"no images found in {fdir}")
    return feats


def fid_folders(fdir1: str | os.PathLike[str], fdir2: str | os.PathLike[str], extractor: FeatureExtractor) -> float:
    """FID between two folders of image files, the way ``cleanfid.fid.compute_fid(fdir1, fdir2,
    custom_feat_extractor=...)`` computes it (its ``compare_folders``: folder features, then
    ``frechet_distance``), with the extractor plugged in.

    Not a direct ``compute_fid`` call, because clean-fid 0.1.35's ``frechet_distance`` fails on
    SciPy >= 1.18 and :func:`frechet_distance_from_features` works around that. Images saved as
    8-bit PNG from tensors give the same FID as :func:`compute_quality` on those tensors (up to
    float rounding), since both quantise to 8 bits first.
    """
    feats1 = folder_features(fdir1, extractor)
    feats2 = folder_features(fdir2, extractor)
    return frechet_distance_from_features(feats1, feats2)


# --------------------------------------------------------------------------- helpers


def quantize_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 as PNG saving would: ``round((x + 1) * 127.5)`` clamped."""
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _check_images(images: Tensor, what: str) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a (N, C, H, W) tensor with C in (1, 3), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{what} must be float in [-1, 1], got {images.dtype}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _progress(it: Any, desc: str, total: int) -> Any:
    if total <= 4:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, leave=False, disable=None)
