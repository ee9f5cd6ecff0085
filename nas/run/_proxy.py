"""The run's evaluation features and the trajectory proxy built from them.

The proxy a joint search and the router rank allocations with (``schedule.proxy``): the
small-sample FID of a candidate's ``schedule.proxy_images`` samples (fixed seed
``schedule.proxy_seed``) against the dataset's reference features, in the evaluation
extractor's feature space (the one the bench's FID uses), with the paired feature distance to
the base model's ``schedule.reference_steps``-step samples from the same noise recorded beside
it (:class:`experts.trajectory_proxy.TrajectoryProxy`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.config import config_to_dict

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from experts.trajectory_proxy import ProxyScore, TrajectoryProxy
    from nas.run._context import RunContext

__all__ = ["build_trajectory_proxy", "proxy_quality", "reference_cache_key"]


def reference_cache_key(ctx: RunContext) -> str:
    """What the reference samples depend on besides their timesteps (the file cannot check it):
    the base model's and data's config, the sampler, the seed, the image and batch counts. A
    hash, so no path is stored."""
    from nas.conditions import sampling_kwargs

    cfg = ctx.cfg
    d = config_to_dict(cfg)
    model, data = dict(d["model"]), dict(d["data"])
    # the same model and data wherever the path is written from (search workers get absolute ones)
    if Path(str(model["base"])).exists():
        model["base"] = str(Path(str(model["base"])).resolve())
    if data.get("path"):
        data["path"] = str(Path(str(data["path"])).resolve())
    s = cfg.schedule
    blob = {"model": model, "data": data, "seed": cfg.seed, "sampler": cfg.sampling.sampler,
            "batch_size": cfg.sampling.batch_size, "images": s.proxy_images, "proxy_seed": s.proxy_seed}
    cond = sampling_kwargs(cfg, ctx.base, s.proxy_images)  # class-conditional: the labels' guidance
    if cond:
        blob["condition"] = {"guidance_scale": cond["guidance_scale"], "null_label": cond["null_label"]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_trajectory_proxy(ctx: RunContext) -> TrajectoryProxy:
    """The run's :class:`~experts.trajectory_proxy.TrajectoryProxy` (see the module docstring);
    the reference samples are cached in ``proxy/`` of the run folder."""
    from experts.trajectory_proxy import TrajectoryProxy
    from nas.conditions import sampling_kwargs
    from nas.metrics import frechet_distance_from_features
    from nas.sampling import sampling_timesteps

    s = ctx.cfg.schedule
    ref_feats = ctx.reference_features()
    extractor = ctx.extractor()

    def sample(model: Any, timesteps: Sequence[int]) -> Any:
        return ctx.generate(model, s.proxy_images, s.proxy_seed, len(timesteps), timesteps=list(timesteps),
                            progress=False)

    def fid(feats: np.ndarray) -> float:
        return frechet_distance_from_features(feats, ref_feats)

    reference = sampling_timesteps(ctx.scheduler, s.reference_steps)
    path = ctx.run.proxy_dir / f"reference-{ctx.cfg.sampling.sampler}-{s.reference_steps}.pt"
    guidance = sampling_kwargs(ctx.cfg, ctx.base, s.proxy_images).get("guidance_scale", 1.0)
    return TrajectoryProxy(sample, ctx.base.unet, reference, extractor, fid=fid, cache_file=path,
                           cache_key=reference_cache_key(ctx), guidance_scale=guidance)


def proxy_quality(score: ProxyScore, proxy: str) -> float:
    """The number a search minimises for ``schedule.proxy``: ``small_fid`` or ``distance``."""
    if proxy == "small_fid":
        if score.fid is None:
            raise ValueError("the trajectory proxy computed no small-sample FID")
        return float(score.fid)
    if proxy == "distance":
        return float(score.distance)
    raise ValueError(f"unknown proxy {proxy!r}; choices: small_fid, distance")
