"""The quality of a bench row, one seed at a time: what the sequential loop and the Ray tasks
(:mod:`benchmarks.bench.parallel`) both run, so a row's numbers do not depend on where its seeds
were sampled.

- :func:`bench_env`: the feature extractor, its reference features and (class-conditional digits)
  the digit classifier, each built or read from the run's cache;
- :func:`score_seed`: sample one seed of a candidate and score it (a JSON-ready dict: FID/KID of
  the seed, class accuracy, the sample grid of the first seed);
- :func:`aggregate_seeds`: the row's quality fields from its seeds (mean and t interval,
  :func:`nas.metrics.quality_with_ci`).

See :mod:`benchmarks.bench`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.bench.context import BenchContext
from benchmarks.bench.records import library_versions, machine_info
from nas.methods import Candidate, budget_key

__all__ = ["BenchEnv", "aggregate_seeds", "bench_env", "score_seed"]


@dataclass(frozen=True)
class BenchEnv:
    """What every row of one bench call shares: the config key, the feature extractor and the
    reference features it scores against, the machine and library versions recorded."""

    key: str
    extractor: Any
    ref_feats: Any
    machine: Any
    versions: Any
    classifier: Any = None  # class-conditional base on digits: the digit classifier (class accuracy)


def bench_env(ctx: BenchContext, key: str) -> BenchEnv:
    """The scoring environment of ``ctx`` (extractor and reference features on ``ctx.device``; the
    reference features and the classifier are cached in the run folder, so the first call makes
    them and later calls, in the driver or in a task, read them)."""
    from nas.data import dataset_id, load_dataset
    from nas.metrics import build_extractor, reference_features, resolve_extractor_kind

    cfg = ctx.cfg
    kind = resolve_extractor_kind(cfg.evaluation.extractor, cfg.data.dataset)
    extractor = build_extractor(kind, device=ctx.device, cache_dir=ctx.run.cache_dir,
                                inception_weights=cfg.evaluation.inception_weights)
    ref_feats = reference_features(dataset_id(cfg.data), load_dataset(cfg.data), extractor, ctx.run.cache_dir)
    return BenchEnv(key, extractor, ref_feats, machine_info(ctx.device), library_versions(), _label_classifier(ctx))


def timesteps_of(c: Candidate) -> list[int] | None:
    """The candidate's own step schedule, or None (``num_steps`` evenly spaced steps)."""
    return None if c.timesteps is None else list(c.timesteps)


def score_seed(ctx: BenchContext, env: BenchEnv, c: Candidate, seed: int, grid: bool) -> dict[str, Any]:
    """Sample ``bench.num_samples`` images of ``c.model`` with ``seed`` and score them:
    ``{seed, quality (QualityResult fields), class_accuracy?, grid?}``; with ``grid`` the first
    ``bench.grid_images`` images are saved (``grid``: the path relative to the run folder)."""
    import torch

    from nas.metrics import compute_quality
    from nas.sampling import save_grid

    b = ctx.cfg.bench
    with torch.no_grad():
        images = ctx.generate(c.model, b.num_samples, int(seed), c.num_steps,
                              timesteps=timesteps_of(c))  # (N,C,H,W) in [-1,1]
    out: dict[str, Any] = {"seed": int(seed), "quality": compute_quality(images, env.ref_feats, env.extractor).to_dict()}
    if env.classifier is not None:
        out["class_accuracy"] = _class_accuracy(ctx, env.classifier, images)
    if grid:
        path = ctx.run.samples_dir / "bench" / f"{c.method}-{budget_key(c.budget_ratio)}.png"
        save_grid(images[: b.grid_images], path)
        out["grid"] = str(path.relative_to(ctx.run.path))
    return out


def aggregate_seeds(ctx: BenchContext, per_seed: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """The row's quality fields over the seeds of ``per_seed`` (in ``bench.seeds`` order) and the
    grid's path.

    Example:
        >>> from types import SimpleNamespace
        >>> q = {"kid": 0.01, "extractor": "digits", "num_generated": 8, "num_reference": 9, "feature_dim": 4}
        >>> ctx = SimpleNamespace(cfg=SimpleNamespace(bench=SimpleNamespace(confidence=0.95)))
        >>> out, grid = aggregate_seeds(ctx, [{"seed": s, "quality": {**q, "fid": f}} for s, f in ((0, 1.0), (1, 3.0))])
        >>> out["fid_mean"], out["fid_values"], grid
        (2.0, [1.0, 3.0], None)
    """
    from nas.metrics import QualityResult, quality_with_ci

    results = [QualityResult(**p["quality"]) for p in per_seed]
    q = quality_with_ci(results, confidence=ctx.cfg.bench.confidence)
    accuracy = [float(p["class_accuracy"]) for p in per_seed if p.get("class_accuracy") is not None]
    if accuracy:
        q = {**q, "class_accuracy": sum(accuracy) / len(accuracy), "class_accuracy_per_seed": accuracy}
    grid = next((p["grid"] for p in per_seed if p.get("grid")), None)
    return q, grid


def _class_accuracy(ctx: BenchContext, classifier: Any, images: Any) -> float:
    """How often the digit classifier recognises the class each image was sampled for."""
    from nas.conditions import sampling_kwargs
    from nas.digit_classifier import label_accuracy

    wanted = sampling_kwargs(ctx.cfg, ctx.base, int(images.shape[0]))["class_labels"]
    return float(label_accuracy(classifier, images, wanted))


def _label_classifier(ctx: BenchContext) -> Any:
    """The digit classifier for a class-conditional base on the digits data, else None."""
    from nas.conditions import base_condition

    if base_condition(ctx.cfg, ctx.base) is None or ctx.cfg.data.dataset != "digits":
        return None
    from nas.digit_classifier import load_or_train_digit_classifier

    return load_or_train_digit_classifier(ctx.run.cache_dir, ctx.device)
