"""Discovering the experts' timestep intervals from the base model (``diffnas intervals``).

Measures the timestep similarity matrix of the base model on its data (a class-conditional
model with each image's class label; ``intervals.*`` keys,
:class:`nas.config.IntervalsConfig`), splits it into contiguous intervals and writes
``runs/<name>/intervals.json`` and ``runs/<name>/similarity.png``. Re-running with the same
measurement settings reuses the stored matrix (only the cheap segmentation is redone, e.g.
after changing ``intervals.num_intervals``); ``force`` measures again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from nas.config import ExperimentConfig, config_to_dict
from nas.errors import UserError
from nas.run import RunContext, RunDir

if TYPE_CHECKING:  # pragma: no cover
    from experts.discovery import IntervalDiscovery

log = logging.getLogger(__name__)

__all__ = ["format_intervals", "run_intervals", "similarity_key"]

# intervals.* keys that change the measured matrix (the others only change the segmentation)
_MATRIX_KEYS = ("grid_size", "measure", "aggregate", "num_batches", "batch_size", "projection_dim",
                "activation_module")


def _seed(cfg: ExperimentConfig) -> int:
    return int(cfg.intervals.seed if cfg.intervals.seed is not None else cfg.seed)


def similarity_key(cfg: ExperimentConfig) -> str:
    """Hash of everything that determines the similarity matrix: base model, data, measurement.

    Example:
        >>> from nas.config import load_config
        >>> a = similarity_key(load_config(None, ["intervals.num_intervals=3"]))
        >>> a == similarity_key(load_config(None, [])), a == similarity_key(load_config(None, ["intervals.grid_size=30"]))
        (True, False)
    """
    iv = config_to_dict(cfg.intervals)
    payload = {
        "model": config_to_dict(cfg.model),
        "data": config_to_dict(cfg.data),
        "intervals": {k: iv[k] for k in _MATRIX_KEYS},
        "seed": _seed(cfg),
    }
    if cfg.intervals.measure != "activation":
        payload["intervals"].pop("activation_module")
    else:
        payload["intervals"].pop("aggregate")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _segment_args(cfg: ExperimentConfig) -> dict[str, Any]:
    iv = cfg.intervals
    return {"num_intervals": iv.num_intervals, "max_intervals": iv.max_intervals, "criterion": iv.criterion,
            "penalty": iv.penalty, "min_grid_points": iv.min_grid_points}


def _stored(run: RunDir, key: str) -> IntervalDiscovery | None:
    from experts.discovery import IntervalDiscovery

    path = run.intervals_path
    if not path.is_file():
        return None
    try:
        old = IntervalDiscovery.load(path)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        log.warning("ignoring %s (%s); measuring again", path, exc)
        return None
    if old.settings.get("similarity_key") != key:
        log.info("%s was measured with other settings; measuring again", path)
        return None
    return old


def run_intervals(ctx: RunContext, force: bool = False) -> tuple[IntervalDiscovery, bool]:
    """Discover the intervals of the run's base model; write ``intervals.json`` and ``similarity.png``.

    Args:
        force: measure the similarity matrix again even if ``intervals.json`` has it.

    Returns:
        ``(discovery, reused)``: ``reused`` is True when the stored matrix was reused (no
        UNet pass ran).
    """
    from experts.discovery import intervals_from_similarity, plot_similarity

    cfg, run = ctx.cfg, ctx.run
    key = similarity_key(cfg)
    old = None if force else _stored(run, key)
    if old is not None:
        T = old.intervals.num_train_timesteps
        _check_fixed_k(cfg, len(old.timesteps))
        settings = dict(old.settings, segment=_segment_args(cfg))
        result = intervals_from_similarity(
            old.matrix, old.timesteps, T, measure=old.measure, settings=settings, runtime_s=old.runtime_s,
            **_segment_args(cfg),
        )
        changed = result != old or old.settings.get("segment") != _segment_args(cfg)
        if changed:
            result.save(run.intervals_path)
        if changed or not run.similarity_path.is_file():
            plot_similarity(result, run.similarity_path)
        log.info("reused the similarity matrix in %s%s", run.intervals_path,
                 " (segmentation redone)" if changed else "")
        return result, True
    return _measure(ctx, key), False


def _measure(ctx: RunContext, key: str) -> IntervalDiscovery:
    """Measure the similarity matrix on the base model and segment it; writes both files."""
    from experts.discovery import discover_intervals, plot_similarity
    from nas.conditions import training_labels
    from nas.data import dataset_id, encode_latents, load_dataset

    cfg, run, device = ctx.cfg, ctx.run, ctx.device
    iv = cfg.intervals
    _check_fixed_k(cfg, iv.grid_size)
    base = ctx.base
    images = load_dataset(cfg.data)  # (N, C, H, W) in [-1, 1]
    if base.vae is not None:
        images = encode_latents(images, base.vae, device=device)  # (N, c, h, w) scaled latents
    if tuple(images.shape[1:]) != tuple(base.sample_shape):
        raise UserError(
            f"the data gives {tuple(images.shape[1:])} samples but the base UNet denoises "
            f"{tuple(base.sample_shape)}; set data.image_size (and data.dataset) to match model.base"
        )
    T = int(base.scheduler_config.get("num_train_timesteps", 1000))
    if iv.grid_size > T:
        raise UserError(f"intervals.grid_size={iv.grid_size} exceeds the model's {T} training timesteps")
    settings = {
        "similarity_key": key,
        "model": base.source,
        "model_hash": base.info.get("config_hash"),
        "dataset": dataset_id(cfg.data),
        "scheduler_config": {k: v for k, v in base.scheduler_config.items() if _jsonable(v)},
        "segment": _segment_args(cfg),
    }
    labels = training_labels(cfg, base, int(images.shape[0])).get("labels")  # class-conditional: (N,) classes
    result = discover_intervals(
        base.unet, images, base.scheduler_config, grid_size=iv.grid_size, measure=iv.measure, aggregate=iv.aggregate,
        num_batches=iv.num_batches, batch_size=iv.batch_size, seed=_seed(cfg), projection_dim=iv.projection_dim,
        activation_module=iv.activation_module, device=device, unet_kwargs=base.unet_kwargs, settings=settings,
        progress=ctx.progress, labels=labels, **_segment_args(cfg),
    )
    result.save(run.intervals_path)
    plot_similarity(result, run.similarity_path)
    return result


def _check_fixed_k(cfg: ExperimentConfig, grid_size: int) -> None:
    k = cfg.intervals.num_intervals
    m = cfg.intervals.min_grid_points
    if m > grid_size or (k != "auto" and int(k) > grid_size // m):
        raise UserError(
            f"intervals.num_intervals={k} with intervals.min_grid_points={m} does not fit the grid of "
            f"{grid_size} timesteps"
        )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def format_intervals(result: IntervalDiscovery, sampler: str | None = None, num_steps: int | None = None) -> str:
    """The table ``diffnas intervals`` prints: one row per interval (span, grid points, mean
    within-interval similarity, sampling steps served with ``sampler``/``num_steps``)."""
    import numpy as np

    S = result.matrix
    seg = result.segmentation
    ends = (*seg.starts[1:], len(result.timesteps))
    steps = None
    if sampler is not None and num_steps is not None:
        try:
            from nas.sampling import make_scheduler, sampling_timesteps

            T = result.intervals.num_train_timesteps
            sched_cfg = result.settings.get("scheduler_config") or {"num_train_timesteps": T}
            visited = sampling_timesteps(make_scheduler(sampler, sched_cfg), num_steps)
            steps = result.intervals.steps_per_interval(visited)
        except Exception as exc:  # the table is informative; never fail on it
            log.debug("cannot count sampling steps per interval: %s", exc)
    header = ["interval", "timesteps", "grid points", "mean similarity"]
    if steps is not None:
        header.append(f"{sampler} steps (of {num_steps})")
    rows = []
    for i, ((lo, hi), a, b) in enumerate(zip(result.intervals.spans(), seg.starts, ends)):
        block = S[a:b, a:b]
        n = b - a
        within = float((block.sum() - n) / (n * n - n)) if n > 1 else 1.0
        row = [str(i), f"[{lo}, {hi})", f"{n} ({result.timesteps[a]}..{result.timesteps[b - 1]})", f"{within:.3f}"]
        if steps is not None:
            row.append(str(steps[i]))
        rows.append(row)
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    off = S[~np.eye(len(S), dtype=bool)]
    lines.append(f"off-diagonal similarity: min {off.min():.3f}, mean {off.mean():.3f}" if off.size else "")
    return "\n".join(lines)
