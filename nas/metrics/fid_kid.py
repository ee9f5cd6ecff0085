"""FID and KID through clean-fid from features, tensors or image folders; intervals over seeds."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import Tensor

from nas.metrics.extractors import FeatureExtractor
from search_spaces.errors import UserError

logger = logging.getLogger(__name__)


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
        >>> from nas.metrics import build_extractor, reference_features
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


def t_interval(values: Sequence[float], confidence: float) -> tuple[float, float | None, float | None]:
    """mean, sample std, half-width of the two-sided t interval (None for fewer than 2 values).

    Example:
        >>> mean, std, half = t_interval([1.0, 2.0, 3.0], 0.95)
        >>> mean, std, round(half, 3)
        (2.0, 1.0, 2.484)
    """
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
        mean, std, half = t_interval(values, confidence)
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
