"""A trajectory-level quality proxy: how far a candidate's samples land from the base model's.

The held-out denoising loss of each expert, weighted by its steps, sees the error of pruning
but not the discretisation error of sampling with fewer or differently placed steps. This proxy
sees both: on a fixed batch of seeds, it samples the candidate (a mixture, or any model that
takes ``(x, t)``) along its step schedule, and compares the final samples with the base model's
samples from the SAME initial noise along a reference schedule (e.g. 50 DDIM steps), in a
feature space (the evaluation extractor's; experts does not import nas, so the features,
the sampler and the optional FID arrive as callables).

Score (:class:`ProxyScore`):

- ``distance``: the mean paired squared feature distance ``mean_i ||f(c_i) - f(r_i)||^2``
  divided by the reference features' spread ``mean_i ||f(r_i) - mean_j f(r_j)||^2``, so it
  is scale-free: 0 when the candidate reproduces the reference samples; about 2 when its
  samples are as far from their partners as two unrelated reference samples are.
- ``fid``: optionally, a small-sample FID of the candidate's features (a callable built by the
  caller from reference statistics, e.g. ``nas.metrics.frechet_distance_from_features``
  against the data's features).

Cost: the reference costs ``N x R`` network calls once (``N`` images, ``R`` reference steps;
cached in memory and, with ``cache_file``, on disk); each candidate costs ``N x S`` calls
(``S`` its steps) plus one feature pass over ``N`` images. With ``N = 64`` and 10 steps that is
640 calls per candidate, the price of 64 images: 1/16 of a 1,024-image FID.

Example:
    >>> import torch
    >>> def sample(model, timesteps):  # stands in for nas.sampling.generate at fixed seeds
    ...     x = torch.linspace(-1, 1, 8).reshape(8, 1)
    ...     for t in timesteps:
    ...         x = model(x, t)
    ...     return x
    >>> base = lambda x, t: 0.9 * x
    >>> proxy = TrajectoryProxy(sample, base, [40, 30, 20, 10, 0], features=lambda x: x)
    >>> proxy.score(base, [40, 30, 20, 10, 0]).distance
    0.0
    >>> proxy.score(base, [40, 0]).distance > 0
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from experts.guidance import guided_unet_calls

__all__ = ["ProxyScore", "TrajectoryProxy"]

log = logging.getLogger(__name__)

#: ``sample(model, timesteps) -> images (N, C, H, W)``: the same initial noise on every call.
Sampler = Callable[[Callable[..., Any], Sequence[int]], Tensor]
#: ``features(images) -> (N, D)`` (a tensor or an array), e.g. the evaluation extractor.
Features = Callable[[Tensor], Any]


@dataclass(frozen=True)
class ProxyScore:
    """The proxy's verdict on one candidate (lower is better).

    Attributes:
        distance: paired squared feature distance to the reference samples, relative to the
            reference features' spread (0: the reference samples reproduced).
        raw_distance: the paired squared feature distance itself.
        fid: small-sample FID of the candidate's features, when a ``fid`` callable was given.
        unet_calls: network calls this score cost (images x steps; the reference excluded).
        num_images: images compared.
        num_steps: the candidate's sampling steps.
    """

    distance: float
    raw_distance: float
    fid: float | None
    unet_calls: int
    num_images: int
    num_steps: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _timesteps(schedule: Sequence[int] | Any) -> list[int]:
    ts = schedule.timesteps() if callable(getattr(schedule, "timesteps", None)) else schedule
    out = [int(t) for t in ts]
    if not out:
        raise ValueError("a schedule needs at least one timestep")
    return out


def _as_features(x: Any) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)
    return arr.reshape(arr.shape[0], -1)  # (N, D)


class TrajectoryProxy:
    """Distance of a candidate's samples to the base model's reference samples, same seeds.

    Args:
        sample: ``sample(model, timesteps) -> (N, C, H, W)`` images, with the same initial
            noise on every call (e.g. ``functools.partial(nas.sampling.generate, ...)`` at a
            fixed seed, through a small adapter).
        base: the base model (what the reference samples come from).
        reference: the reference schedule: a descending timestep list or a
            ``StepSchedule`` (e.g. 50 DDIM steps).
        features: ``features(images) -> (N, D)``.
        fid: optional ``fid(candidate_features (N, D)) -> float``.
        cache_file: optional ``.pt`` file for the reference samples; reused when its reference
            timesteps and ``cache_key`` match (the key should name the base model and the
            seeds, which the file cannot check).
        cache_key: see ``cache_file``.
        guidance_scale: the classifier-free guidance ``sample`` applies (a class-conditional
            model sampled with the same labels and guidance for the reference and every
            candidate); above 1 each step costs two network calls per image, counted in
            :attr:`ProxyScore.unet_calls` and :meth:`cost`.
    """

    def __init__(self, sample: Sampler, base: Callable[..., Any], reference: Sequence[int] | Any,
                 features: Features, *, fid: Callable[[np.ndarray], float] | None = None,
                 cache_file: str | Path | None = None, cache_key: str = "", guidance_scale: float = 1.0) -> None:
        self.sample = sample
        self.guidance_scale = float(guidance_scale)
        self.base = base
        self.reference_timesteps = _timesteps(reference)
        self.features = features
        self.fid = fid
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self.cache_key = str(cache_key)
        self._ref_samples: Tensor | None = None
        self._ref_feats: np.ndarray | None = None
        self._ref_spread: float | None = None

    # ----------------------------------------------------------------- reference
    @property
    def reference_samples(self) -> Tensor:
        """The base model's samples at the reference schedule (computed once)."""
        if self._ref_samples is None:
            cached = self._load_cached()
            self._ref_samples = cached if cached is not None else self._sample_reference()
        return self._ref_samples

    def _load_cached(self) -> Tensor | None:
        if self.cache_file is None or not self.cache_file.is_file():
            return None
        data = torch.load(self.cache_file, map_location="cpu", weights_only=True)
        if data.get("timesteps") != self.reference_timesteps or data.get("key") != self.cache_key:
            log.info("%s holds another reference (timesteps or key differ): sampling anew", self.cache_file)
            return None
        return data["samples"]

    def _sample_reference(self) -> Tensor:
        samples = self.sample(self.base, self.reference_timesteps).detach().cpu()
        log.info("reference: %d images x %d steps = %d network calls", samples.shape[0],
                 len(self.reference_timesteps), samples.shape[0] * len(self.reference_timesteps))
        if self.cache_file is not None:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(self.cache_file.suffix + ".tmp")
            torch.save({"timesteps": self.reference_timesteps, "key": self.cache_key, "samples": samples}, tmp)
            tmp.replace(self.cache_file)
        return samples

    @property
    def reference_features(self) -> np.ndarray:
        """(N, D) features of :attr:`reference_samples` (computed once)."""
        if self._ref_feats is None:
            self._ref_feats = _as_features(self.features(self.reference_samples))
            centred = self._ref_feats - self._ref_feats.mean(axis=0, keepdims=True)
            spread = float((centred ** 2).sum(axis=1).mean())
            self._ref_spread = spread if spread > 0 else 1.0
        return self._ref_feats

    @property
    def num_images(self) -> int:
        """Images per comparison (the reference batch)."""
        return int(self.reference_samples.shape[0])

    def cost(self, schedule: Sequence[int] | Any) -> int:
        """Network calls one :meth:`score` of a candidate with this schedule costs."""
        return self.num_images * guided_unet_calls(len(_timesteps(schedule)), self.guidance_scale)

    # ----------------------------------------------------------------- scoring
    def score(self, model: Callable[..., Any], schedule: Sequence[int] | Any) -> ProxyScore:
        """Sample ``model`` along ``schedule`` from the reference seeds and compare.

        Args:
            model: the candidate (a mixture routing on ``t``, a pruned UNet, the base).
            schedule: its descending timestep list or ``StepSchedule``.
        """
        ts = _timesteps(schedule)
        ref = self.reference_features
        images = self.sample(model, ts)
        if images.shape[0] != ref.shape[0]:
            raise ValueError(f"the sampler gave {images.shape[0]} images, the reference has {ref.shape[0]}")
        feats = _as_features(self.features(images))
        raw = float(((feats - ref) ** 2).sum(axis=1).mean())
        fid = float(self.fid(feats)) if self.fid is not None else None
        return ProxyScore(distance=raw / float(self._ref_spread), raw_distance=raw, fid=fid,
                          unet_calls=int(images.shape[0]) * guided_unet_calls(len(ts), self.guidance_scale),
                          num_images=int(images.shape[0]),
                          num_steps=len(ts))

    __call__ = score
