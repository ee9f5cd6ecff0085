"""A small CNN digit classifier: the offline feature extractor for FID/KID on the digits data.

Inception features need a 95 MB weights file that cannot be downloaded offline, and they say
little about 16x16 grey digits anyway. For the embedded default the project trains this
classifier once, on scikit-learn's bundled ``load_digits`` (1,797 images, 8x8, resized to 16x16
with bilinear antialiased interpolation and scaled to [-1, 1], the same preprocessing as the
project's ``digits`` data), on the CPU, seeded, in a few seconds. The weights go to
``<cache_dir>/digit_classifier/`` as safetensors with a JSON config (holding the held-out
accuracy), and are reused on later calls. The FID feature is the 64-d penultimate layer
(the first fully connected layer, before its ReLU), divided by one fixed scalar
(``feature_scale``, the RMS of the training images' features) so that features are O(1):
clean-fid's KID uses the cubic kernel ``(x.y / D + 1) ** 3``, which, like Inception's pool
features, expects that scale.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> clf = load_or_train_digit_classifier(Path(tempfile.mkdtemp()), "cpu")
    >>> clf.test_accuracy > 0.95
    True
    >>> clf.features(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 64])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: Bump when the architecture, data or training recipe changes: cached weights are retrained.
FORMAT_VERSION = 1
WEIGHTS_FILENAME = "digit_classifier.safetensors"
CONFIG_FILENAME = "digit_classifier.json"
SUBDIR = "digit_classifier"


@dataclass(frozen=True)
class DigitClassifierConfig:
    """Architecture and training recipe; everything here is part of the cache key."""

    image_size: int = 16
    channels: tuple[int, int] = (16, 32)
    feature_dim: int = 64
    num_classes: int = 10
    seed: int = 0
    test_fraction: float = 0.2
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 5e-3
    format_version: int = FORMAT_VERSION

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> "DigitClassifierConfig":
        """Inverse of :meth:`to_json_dict`; unknown keys raise TypeError."""
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class DigitClassifier(nn.Module):
    """CNN for 1x16x16 digits in [-1, 1]: two conv blocks, a ``feature_dim`` layer, logits.

    ``features(x)`` returns the penultimate activations (N, feature_dim), pre-ReLU, which are
    what FID/KID are computed on. ``test_accuracy`` is the held-out accuracy measured when the
    classifier was trained (NaN for an untrained instance).

    Example:
        >>> import torch
        >>> clf = DigitClassifier(DigitClassifierConfig())
        >>> clf(torch.zeros(3, 1, 16, 16)).shape
        torch.Size([3, 10])
    """

    def __init__(self, config: DigitClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        spatial = config.image_size // 4
        self.fc1 = nn.Linear(c2 * spatial * spatial, config.feature_dim)
        self.fc2 = nn.Linear(config.feature_dim, config.num_classes)
        # fixed after training: features() divides by it (saved with the weights)
        self.register_buffer("feature_scale", torch.ones(()))
        self.test_accuracy: float = float("nan")
        self.weights_sha256: str = ""

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def _penultimate(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, c1, S/2, S/2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (N, c2, S/4, S/4)
        return self.fc1(h.flatten(1))  # (N, feature_dim)

    def features(self, x: Tensor) -> Tensor:
        """x: (N, 1, S, S) in [-1, 1] -> (N, feature_dim) penultimate activations / feature_scale."""
        return self._penultimate(x) / self.feature_scale

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 1, S, S) in [-1, 1] -> (N, num_classes) logits."""
        return self.fc2(F.relu(self._penultimate(x)))


def load_digits_tensor(image_size: int = 16) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as (N, 1, S, S) float32 in [-1, 1] and (N,) int64 labels.

    Pixel values 0..16 are scaled to [0, 1], resized with bilinear antialiased interpolation
    (``align_corners=False``), then mapped to [-1, 1].

    Example:
        >>> x, y = load_digits_tensor(16)
        >>> tuple(x.shape), float(x.min()) >= -1.0, int(y.max())
        ((1797, 1, 16, 16), True, 9)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0)  # (N, 8, 8)
    images = images.unsqueeze(1)  # (N, 1, 8, 8)
    if image_size != images.shape[-1]:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    images = (images.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()  # (N, 1, S, S) in [-1, 1]
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return images, labels


def _split(labels: Tensor, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=labels.numpy()
    )
    return np.sort(train_idx), np.sort(test_idx)


@torch.no_grad()
def _accuracy(model: DigitClassifier, x: Tensor, y: Tensor) -> float:
    model.eval()
    pred = model(x).argmax(dim=1)
    return float((pred == y).float().mean())


def _shift_batch(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random translation by up to one pixel (the same for the whole batch), background -1."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)  # (B, 1, S+2, S+2)
    s = x.shape[-1]
    return padded[:, :, 1 + dy : 1 + dy + s, 1 + dx : 1 + dx + s]


def train_digit_classifier(config: DigitClassifierConfig | None = None) -> DigitClassifier:
    """Train on the CPU, deterministically (seeded), and set ``test_accuracy``.

    Runs on one CPU thread: for a model this small that is both the fastest setting on a
    loaded machine (about 2 s) and bit-for-bit reproducible.

    Example:
        >>> clf = train_digit_classifier(DigitClassifierConfig(epochs=1))
        >>> 0.0 <= clf.test_accuracy <= 1.0
        True
    """
    config = config or DigitClassifierConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(config)
    finally:
        torch.set_num_threads(threads)


def _train(config: DigitClassifierConfig) -> DigitClassifier:
    images, labels = load_digits_tensor(config.image_size)
    train_idx, test_idx = _split(labels, config.test_fraction, config.seed)
    x_train, y_train = images[train_idx], labels[train_idx]
    x_test, y_test = images[test_idx], labels[test_idx]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = DigitClassifier(config)
    gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps_per_epoch = -(-len(x_train) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    model.train()
    for _epoch in range(config.epochs):
        order = torch.randperm(len(x_train), generator=gen)
        for start in range(0, len(x_train), config.batch_size):
            idx = order[start : start + config.batch_size]
            xb = _shift_batch(x_train[idx], gen)  # (B, 1, S, S)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.test_accuracy = _accuracy(model, x_test, y_test)
    model.eval()
    with torch.no_grad():
        rms = model._penultimate(x_train).pow(2).mean().sqrt()  # scalar
        model.feature_scale.copy_(rms.clamp_min(1e-6))
    logger.info(
        "digit classifier trained: held-out accuracy %.4f on %d images (%d train)",
        model.test_accuracy,
        len(x_test),
        len(x_train),
    )
    return model


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (weights fingerprints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """Write through a temp file in the same folder, then rename (safe for parallel workers)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_digit_classifier(model: DigitClassifier, folder: Path) -> None:
    """Write ``digit_classifier.safetensors`` and ``digit_classifier.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILENAME
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write_bytes(weights, lambda p: save_file(state, str(p)))
    model.weights_sha256 = sha256_file(weights)
    meta = {
        "config": model.config.to_json_dict(),
        "test_accuracy": model.test_accuracy,
        "weights_sha256": model.weights_sha256,
        "feature": "fc1 output (pre-ReLU, penultimate layer) / feature_scale",
    }
    _atomic_write_bytes(
        folder / CONFIG_FILENAME, lambda p: p.write_text(json.dumps(meta, indent=2, sort_keys=True))
    )


def _try_load(folder: Path, expected: DigitClassifierConfig) -> DigitClassifier | None:
    weights, meta_path = folder / WEIGHTS_FILENAME, folder / CONFIG_FILENAME
    if not (weights.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        config = DigitClassifierConfig.from_json_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable digit classifier config %s (%s); retraining", meta_path, exc)
        return None
    if config != expected:
        logger.info("cached digit classifier has another recipe; retraining")
        return None
    sha = sha256_file(weights)
    if sha != meta.get("weights_sha256"):
        logger.warning("digit classifier weights %s do not match their config; retraining", weights)
        return None
    model = DigitClassifier(config)
    model.load_state_dict(load_file(str(weights)))
    model.test_accuracy = float(meta["test_accuracy"])
    model.weights_sha256 = sha
    return model.eval()


@torch.no_grad()
def label_accuracy(classifier: DigitClassifier, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """How often the classifier recognises the requested digit: the fraction of ``images``
    (N, 1|3, H, W) in [-1, 1] classified as ``labels`` (N,). The offline stand-in for a CLIP score
    of class-conditional samples (colour is averaged to grey, other sizes are resized).

    Example:
        >>> import torch
        >>> from nas.data import load_digits_images, load_digits_labels
        >>> clf = train_digit_classifier()
        >>> x, y = load_digits_images(16, limit=200), load_digits_labels(limit=200)
        >>> label_accuracy(clf, x, y) > 0.9, label_accuracy(clf, x, (y + 1) % 10) < 0.1
        (True, True)
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"one label per image: {labels.shape[0]} labels for {images.shape[0]} images")
    if images.shape[0] == 0:
        raise ValueError("no images to classify")
    classifier.eval()
    device = next(classifier.parameters()).device
    size = int(classifier.config.image_size)
    correct = 0
    for lo in range(0, images.shape[0], batch_size):
        x = images[lo:lo + batch_size].float()
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        pred = classifier(x.clamp(-1, 1).to(device)).argmax(dim=1).cpu()
        correct += int((pred == labels[lo:lo + batch_size].cpu().long()).sum())
    return correct / int(images.shape[0])


def load_or_train_digit_classifier(
    cache_dir: Path, device: torch.device | str = "cpu", config: DigitClassifierConfig | None = None
) -> DigitClassifier:
    """Load the cached classifier from ``cache_dir/digit_classifier/`` or train and cache it.

    Training always runs on the CPU (seconds; deterministic); the model is then moved to
    ``device`` in eval mode with gradients disabled.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> d = Path(tempfile.mkdtemp())
        >>> a = load_or_train_digit_classifier(d)
        >>> b = load_or_train_digit_classifier(d)   # read from the cache
        >>> a.weights_sha256 == b.weights_sha256
        True
    """
    expected = config or DigitClassifierConfig()
    folder = Path(cache_dir) / SUBDIR
    model = _try_load(folder, expected)
    if model is None:
        model = train_digit_classifier(expected)
        save_digit_classifier(model, folder)
        logger.info("digit classifier saved to %s", folder)
    else:
        logger.info(
            "digit classifier loaded from %s (held-out accuracy %.4f)", folder, model.test_accuracy
        )
    model.requires_grad_(False)
    return model.to(device).eval()
