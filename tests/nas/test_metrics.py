"""FID/KID through clean-fid: the digit classifier, extractors, reference cache, intervals."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats

from nas import digit_classifier as dc
from nas import metrics
from nas.metrics import (
    ALLOW_DOWNLOAD_ENV,
    INCEPTION_ENV,
    INCEPTION_OPTION,
    QualityResult,
    build_extractor,
    check_extractor_available,
    compute_quality,
    fid_folders,
    quality_from_features,
    quality_with_ci,
    reference_features,
    resolve_extractor_kind,
)
from search_spaces.errors import UserError


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metrics_cache")


@pytest.fixture(scope="module")
def digits_ext(cache_dir: Path) -> metrics.DigitsFeatureExtractor:
    ext = build_extractor("digits", device="cpu", cache_dir=cache_dir)
    assert isinstance(ext, metrics.DigitsFeatureExtractor)
    return ext


@pytest.fixture(scope="module")
def halves() -> tuple[torch.Tensor, torch.Tensor]:
    images, _ = dc.load_digits_tensor(16)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[perm[:898]], images[perm[898:]]  # disjoint halves: (898, 1, 16, 16), (899, ...)


# --------------------------------------------------------------------------- classifier


def test_digits_tensor_matches_project_preprocessing() -> None:
    images, labels = dc.load_digits_tensor(16)
    assert images.shape == (1797, 1, 16, 16) and labels.shape == (1797,)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    assert float(images.min()) == -1.0  # background is black


def test_classifier_accuracy_and_cache(cache_dir: Path, digits_ext: metrics.DigitsFeatureExtractor, monkeypatch) -> None:
    folder = cache_dir / dc.SUBDIR
    meta = json.loads((folder / dc.CONFIG_FILENAME).read_text())
    assert (folder / dc.WEIGHTS_FILENAME).is_file()
    assert meta["test_accuracy"] > 0.95
    assert digits_ext.test_accuracy == pytest.approx(meta["test_accuracy"])

    # the second call reads the cache: training must not run again
    def no_training(*args, **kwargs):
        raise AssertionError("retrained although a cached classifier exists")

    monkeypatch.setattr(dc, "train_digit_classifier", no_training)
    again = dc.load_or_train_digit_classifier(cache_dir, "cpu")
    assert again.weights_sha256 == meta["weights_sha256"]
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    assert torch.equal(again.features(x), digits_ext.classifier.features(x))


def test_classifier_training_is_deterministic(cache_dir: Path, tmp_path: Path) -> None:
    fresh = dc.load_or_train_digit_classifier(tmp_path, "cpu")
    cached = json.loads((cache_dir / dc.SUBDIR / dc.CONFIG_FILENAME).read_text())
    assert fresh.weights_sha256 == cached["weights_sha256"]


def test_classifier_retrains_when_weights_are_tampered(tmp_path: Path) -> None:
    cfg = dc.DigitClassifierConfig(epochs=1)
    first = dc.load_or_train_digit_classifier(tmp_path, "cpu", cfg)
    weights = tmp_path / dc.SUBDIR / dc.WEIGHTS_FILENAME
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    second = dc.load_or_train_digit_classifier(tmp_path, "cpu", cfg)
    assert second.weights_sha256 == first.weights_sha256  # retrained, same seed -> same weights


def test_features_are_order_one(digits_ext: metrics.DigitsFeatureExtractor, halves) -> None:
    feats = digits_ext(halves[0])
    assert feats.shape == (898, 64) and feats.dtype == np.float32
    rms = float(np.sqrt(np.mean(feats.astype(np.float64) ** 2)))
    assert 0.5 < rms < 2.0


# --------------------------------------------------------------------------- FID / KID


def test_fid_orders_data_blur_noise(cache_dir: Path, digits_ext: metrics.DigitsFeatureExtractor, halves) -> None:
    """Data vs a disjoint half of itself is near 0; blur and noise mixing raise FID monotonically."""
    a, b = halves
    ref = reference_features("digits-a", a, digits_ext, cache_dir)
    noise = torch.rand(b.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1  # (899, 1, 16, 16)
    degraded = {
        "data": b,
        "blur3": F.avg_pool2d(b, 3, stride=1, padding=1, count_include_pad=False),
        "blur5": F.avg_pool2d(b, 5, stride=1, padding=2, count_include_pad=False),
        "mix25": 0.75 * b + 0.25 * noise,
        "mix50": 0.5 * b + 0.5 * noise,
        "noise": noise,
    }
    results = {name: compute_quality(x, ref, digits_ext, kid_num_subsets=20) for name, x in degraded.items()}
    fid = {k: r.fid for k, r in results.items()}
    kid = {k: r.kid for k, r in results.items()}
    print("FID:", {k: round(v, 4) for k, v in fid.items()})
    print("KID:", {k: round(v, 5) for k, v in kid.items()})
    for chain in (("data", "blur3", "blur5", "noise"), ("data", "mix25", "mix50", "noise")):
        assert [fid[k] for k in chain] == sorted(fid[k] for k in chain), chain
        assert [kid[k] for k in chain] == sorted(kid[k] for k in chain), chain
    assert fid["data"] < 0.05 * fid["noise"]
    assert all(np.isfinite(v) for v in kid.values()) and abs(kid["data"]) < 0.05 * kid["noise"]
    r = results["data"]
    assert (r.extractor, r.num_generated, r.num_reference, r.feature_dim) == ("digits", 899, 898, 64)
    assert "digits features" in r.describe() and "899 generated" in r.describe()


def test_kid_is_seeded_and_leaves_numpy_state_alone(digits_ext, halves) -> None:
    ref = digits_ext(halves[0][:300])
    gen = digits_ext(halves[1][:300])
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    r1 = quality_from_features(gen, ref, extractor="digits", kid_subset_size=100, kid_num_subsets=10)
    r2 = quality_from_features(gen, ref, extractor="digits", kid_subset_size=100, kid_num_subsets=10)
    r3 = quality_from_features(gen, ref, extractor="digits", kid_subset_size=100, kid_num_subsets=10, kid_seed=7)
    assert r1 == r2 and r1.kid != r3.kid
    assert np.array_equal(np.random.get_state()[1], before)


def test_fid_survives_scipy_without_sqrtm_disp(monkeypatch) -> None:
    """clean-fid 0.1.35 passes ``disp=False`` to scipy's sqrtm, which SciPy 1.18 removed."""
    import types

    import cleanfid.fid
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(loc=0.3, size=(300, 16))
    expected = metrics.frechet_distance_from_features(a, b)

    def sqrtm_new(A, blocksize=64):  # SciPy >= 1.18 signature: no ``disp``
        return linalg.sqrtm(A)

    monkeypatch.setattr(cleanfid.fid, "linalg", types.SimpleNamespace(sqrtm=sqrtm_new))
    assert metrics.frechet_distance_from_features(a, b) == pytest.approx(expected, rel=1e-9)
    assert expected > 16 * 0.3**2 * 0.5  # the mean shift is seen


def test_quality_rejects_mismatched_features(digits_ext, halves) -> None:
    with pytest.raises(ValueError, match="do not come from"):
        compute_quality(halves[1][:10], np.zeros((10, 2048), np.float32), digits_ext)
    with pytest.raises(ValueError, match="at least 2"):
        quality_from_features(np.zeros((1, 4)), np.zeros((5, 4)), extractor="x")
    with pytest.raises(ValueError, match="C in"):
        digits_ext(torch.zeros(2, 2, 16, 16))


def test_fid_folders_through_cleanfid_matches_tensor_path(tmp_path: Path, digits_ext, halves) -> None:
    a, b = halves[0][:150], halves[1][:150]
    for name, imgs in (("a", a), ("b", b)):
        d = tmp_path / name
        d.mkdir()
        for i, img in enumerate(metrics.quantize_uint8(imgs)):
            Image.fromarray(img[0].numpy(), mode="L").save(d / f"{i:04d}.png")
    via_cleanfid = fid_folders(tmp_path / "a", tmp_path / "b", digits_ext)
    via_tensors = quality_from_features(digits_ext(b), digits_ext(a), extractor="digits").fid
    assert via_cleanfid == pytest.approx(via_tensors, rel=1e-3)
    # the extractor also plugs straight into clean-fid's compute_fid (where SciPy < 1.18 allows)
    import cleanfid.fid

    try:
        direct = cleanfid.fid.compute_fid(
            str(tmp_path / "a"), str(tmp_path / "b"), mode="clean", num_workers=0, device="cpu",
            custom_feat_extractor=digits_ext.cleanfid_model, custom_fn_resize=digits_ext.cleanfid_resize,
            verbose=False,
        )
    except TypeError as exc:  # clean-fid 0.1.35 + SciPy >= 1.18: sqrtm(disp=) is gone
        assert "disp" in str(exc)
    else:
        assert float(np.real(direct)) == pytest.approx(via_cleanfid, rel=1e-6)
    with pytest.raises(UserError, match="not found"):
        fid_folders(tmp_path / "missing", tmp_path / "b", digits_ext)


# --------------------------------------------------------------------------- reference cache


def test_reference_features_are_cached(cache_dir: Path, digits_ext, halves, monkeypatch) -> None:
    imgs = halves[1][:200]
    first = reference_features("digits-cache-test", imgs, digits_ext, cache_dir)
    path = metrics.reference_cache_path("digits-cache-test", imgs, digits_ext, cache_dir)
    assert path.is_file() and path.suffix == ".npz" and "-n200-" in path.name
    with np.load(path, allow_pickle=False) as data:
        assert data["feats"].shape == (200, 64) and data["sigma"].shape == (64, 64)
        assert str(data["extractor"]) == "digits"

    calls = []

    def spy(self, images):
        calls.append(images.shape[0])
        return np.zeros((images.shape[0], 64), np.float32)

    monkeypatch.setattr(metrics.DigitsFeatureExtractor, "__call__", spy)
    again = reference_features("digits-cache-test", imgs, digits_ext, cache_dir)
    assert calls == [] and np.array_equal(first, again)
    # different images -> a different key -> computed again
    other = imgs.clone()
    other[0, 0, 0, 0] = 0.5
    reference_features("digits-cache-test", other, digits_ext, cache_dir)
    assert calls == [200]


# --------------------------------------------------------------------------- Inception


@pytest.fixture
def offline(monkeypatch, tmp_path: Path):
    """No env var, no download allowed, clean-fid's /tmp location empty; downloads/loads fail loudly."""
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV, raising=False)
    monkeypatch.setattr("nas.metrics.inception_weights._CLEANFID_DEFAULT_FOLDER", tmp_path / "cleanfid-default")
    import urllib.request

    import cleanfid.downloads_helper
    import cleanfid.inception_torchscript

    def boom(*args, **kwargs):
        raise AssertionError("network or model load attempted")

    monkeypatch.setattr(urllib.request, "urlopen", boom)
    monkeypatch.setattr(cleanfid.downloads_helper, "check_download_inception", boom)
    monkeypatch.setattr(cleanfid.inception_torchscript, "InceptionV3W", boom)
    return tmp_path


def test_inception_missing_offline_is_a_clear_user_error(offline: Path) -> None:
    with pytest.raises(UserError) as err:
        check_extractor_available("inception", cache_dir=offline / "cache")
    msg = str(err.value)
    assert INCEPTION_ENV in msg and f"--set {INCEPTION_OPTION}=" in msg
    assert "inception-2015-12-05.pt" in msg and "https://" in msg and "\n" not in msg
    with pytest.raises(UserError, match=INCEPTION_ENV):
        build_extractor("inception", device="cpu", cache_dir=offline / "cache")


def test_inception_bad_paths_are_user_errors(offline: Path, monkeypatch) -> None:
    with pytest.raises(UserError, match="not found: .*nope.pt"):
        check_extractor_available("inception", cache_dir=offline, inception_weights=str(offline / "nope.pt"))
    monkeypatch.setenv(INCEPTION_ENV, str(offline / "env-missing.pt"))
    with pytest.raises(UserError, match=r"env-missing\.pt.*DIFFNAS_INCEPTION_WEIGHTS"):
        check_extractor_available("inception", cache_dir=offline)
    junk = offline / "junk.pt"
    junk.write_bytes(b"not a torchscript archive")
    with pytest.raises(UserError, match="not a TorchScript archive"):
        check_extractor_available("inception", cache_dir=offline, inception_weights=junk)


def test_extractor_kinds() -> None:
    assert resolve_extractor_kind("auto", "digits") == "digits"
    assert resolve_extractor_kind("auto", "folder:/x") == "inception"
    assert resolve_extractor_kind("inception", "digits") == "inception"
    with pytest.raises(UserError, match="unknown feature extractor 'clip'"):
        resolve_extractor_kind("clip", "digits")


class _FakeLayers(torch.nn.Module):
    """Cheap stand-in for Inception's feature trunk: (B, 3, 299, 299) -> (B, 2048, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] == 299 and x.shape[3] == 299
        h = F.adaptive_avg_pool2d(x, 4).flatten(1)  # (B, 48)
        return torch.relu(self.proj(h))[:, :, None, None]


class _FakeInception(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = _FakeLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


def _fake_inception_file(path: Path) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_FakeInception()), str(path))
    return path


def test_inception_extractor_plumbing_with_a_local_file(tmp_path: Path, monkeypatch, halves) -> None:
    """A TorchScript stand-in with the official file's interface exercises the real code path:
    env var -> clean-fid's InceptionV3W (renamed file via a link) -> clean resize to 299 -> 2048-d."""
    weights = _fake_inception_file(tmp_path / "my-inception.pt")
    monkeypatch.setenv(INCEPTION_ENV, str(weights))
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV, raising=False)
    ext = build_extractor("inception", device="cpu", cache_dir=tmp_path / "cache", batch_size=8)
    assert isinstance(ext, metrics.InceptionFeatureExtractor)
    a, b = halves[0][:20], halves[1][:20]
    fa = ext(a)
    assert fa.shape == (20, 2048) and np.isfinite(fa).all()
    assert np.array_equal(fa[:8], ext(a[:8]))  # batching does not change features
    rgb = ext(a.expand(-1, 3, -1, -1))
    assert np.allclose(rgb, fa)  # grey is repeated to RGB
    ref = reference_features("digits", a, ext, tmp_path / "cache")
    assert np.array_equal(ref, fa)
    assert metrics.reference_cache_path("digits", a, ext, tmp_path / "cache").name.startswith("digits-inception-n20-")


@pytest.mark.slow
def test_inception_quality_end_to_end(tmp_path: Path, monkeypatch, halves) -> None:
    """FID on 2048-d features: clean-fid's sqrtm of a 2048x2048 matrix takes a while on a CPU."""
    weights = _fake_inception_file(tmp_path / metrics.INCEPTION_FILENAME)
    ext = build_extractor("inception", device="cpu", cache_dir=tmp_path, inception_weights=str(tmp_path))
    ref = reference_features("digits", halves[0][:40], ext, tmp_path)
    res = compute_quality(halves[1][:40], ref, ext, kid_subset_size=20, kid_num_subsets=5)
    assert res.extractor == "inception" and res.feature_dim == 2048 and np.isfinite(res.fid) and res.fid >= -1e-6
    assert weights.is_file()


def test_quality_with_ci_matches_scipy() -> None:
    fids = [12.0, 15.5, 13.25, 14.0]
    kids = [0.010, 0.014, 0.011, 0.012]
    results = [QualityResult(f, k, "digits", 500, 1797, 64) for f, k in zip(fids, kids)]
    s = quality_with_ci(results)
    for metric, values in (("fid", fids), ("kid", kids)):
        low, high = stats.t.interval(0.95, df=len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
        assert s[f"{metric}_mean"] == pytest.approx(np.mean(values))
        assert s[f"{metric}_ci_low"] == pytest.approx(low)
        assert s[f"{metric}_ci_high"] == pytest.approx(high)
        assert s[f"{metric}_values"] == values
    assert (s["num_seeds"], s["extractor"], s["num_generated"]) == (4, "digits", 500)
    one = quality_with_ci(results[:1])
    assert one["fid_mean"] == 12.0 and one["fid_ci_low"] is None
    with pytest.raises(ValueError, match="different extractors"):
        quality_with_ci([results[0], QualityResult(1.0, 0.0, "inception", 500, 1797, 2048)])
    with pytest.raises(ValueError):
        quality_with_ci([])
