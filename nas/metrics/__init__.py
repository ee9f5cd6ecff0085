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
  are the TorchScript file ``inception-2015-12-05.pt`` that clean-fid downloads. A local copy
  comes first: the ``inception_weights`` argument (config ``evaluation.inception_weights``),
  the environment variable ``DIFFNAS_INCEPTION_WEIGHTS``, ``<cache>/inception/``, clean-fid's
  ``/tmp``; otherwise clean-fid downloads it, as clean-fid does, unless ``HF_HUB_OFFLINE=1``,
  ``DIFFNAS_OFFLINE=1`` or ``DIFFNAS_ALLOW_DOWNLOAD=0``; an unreachable server fails within
  ``DIFFNAS_CONNECT_TIMEOUT_S`` (10 s) with one line saying how to give a local copy. The file
  is loaded with ``torch.jit.load`` inside clean-fid, exactly as clean-fid does; a TorchScript
  archive is code, so only point this at the official file.

Conventions, stated once: images are float tensors in [-1, 1], NCHW; before feature
extraction they are quantised to 8 bits (``round((x + 1) * 127.5)``), exactly what saving them
as PNG and running clean-fid on the folder would do, so :func:`compute_quality` and
:func:`fid_folders` agree. Grey images are repeated to 3 channels for Inception. KID is
clean-fid's raw value (polynomial-kernel unbiased MMD^2 averaged over subsets), *not* the
x1000 that some papers print; its random subsets are seeded so it is reproducible.

Modules (every name is importable from ``nas.metrics``):

- :mod:`nas.metrics.extractors`: :class:`FeatureExtractor` and its digits / Inception
  subclasses, :func:`build_extractor`, :func:`check_extractor_available`,
  :func:`resolve_extractor_kind`;
- :mod:`nas.metrics.inception_weights`: :func:`resolve_inception_weights` (local copies, then clean-fid's download);
- :mod:`nas.metrics.reference`: the cached reference features (:func:`reference_features`);
- :mod:`nas.metrics.fid_kid`: :class:`QualityResult`, :func:`compute_quality`,
  :func:`quality_from_features`, :func:`quality_with_ci`, :func:`fid_folders`;
- :mod:`nas.metrics.common`: the constants and :func:`quantize_uint8`.

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

from nas.metrics.common import (
    ALLOW_DOWNLOAD_ENV,
    EXTRACTOR_KINDS,
    INCEPTION_ENV,
    INCEPTION_FILENAME,
    INCEPTION_OPTION,
    INCEPTION_SUBDIR,
    INCEPTION_URL,
    REFERENCE_SUBDIR,
    quantize_uint8,
)
from nas.metrics.extractors import (
    DigitsFeatureExtractor,
    FeatureExtractor,
    InceptionFeatureExtractor,
    build_extractor,
    check_extractor_available,
    resolve_extractor_kind,
)
from nas.metrics.fid_kid import (
    QualityResult,
    compute_quality,
    fid_folders,
    folder_features,
    frechet_distance_from_features,
    kernel_distance_seeded,
    quality_from_features,
    quality_with_ci,
    t_interval,
)
from nas.metrics.inception_weights import (
    resolve_inception_weights,
)
from nas.metrics.reference import images_hash, reference_cache_path, reference_features


__all__ = [
    "ALLOW_DOWNLOAD_ENV",
    "EXTRACTOR_KINDS",
    "INCEPTION_ENV",
    "INCEPTION_FILENAME",
    "INCEPTION_OPTION",
    "INCEPTION_SUBDIR",
    "INCEPTION_URL",
    "REFERENCE_SUBDIR",
    "DigitsFeatureExtractor",
    "FeatureExtractor",
    "InceptionFeatureExtractor",
    "QualityResult",
    "build_extractor",
    "check_extractor_available",
    "compute_quality",
    "fid_folders",
    "folder_features",
    "frechet_distance_from_features",
    "images_hash",
    "kernel_distance_seeded",
    "quality_from_features",
    "quality_with_ci",
    "t_interval",
    "quantize_uint8",
    "reference_cache_path",
    "reference_features",
    "resolve_extractor_kind",
    "resolve_inception_weights",
]
