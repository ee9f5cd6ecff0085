"""``diffnas intervals``: discover the experts' timestep intervals from the base model.

Measures the timestep similarity matrix of the base model on its data (``intervals.*`` keys,
:class:`nas.config.IntervalsConfig`), splits it into contiguous intervals and writes
``runs/<name>/intervals.json`` and ``runs/<name>/similarity.png``. Re-running with the same
measurement settings reuses the stored matrix (only the cheap segmentation is redone, e.g.
after changing ``intervals.num_intervals``); ``--force`` measures again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from nas.commands import register
from nas.commands.base import load_base, prepare_run
from nas.config import ExperimentConfig, config_to_dict
from nas.errors import UserError
from nas.rundir import RunDir

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


def run_intervals(
    cfg: ExperimentConfig, run: RunDir, device: Any, force: bool = False, progress: bool = True
) -> tuple[IntervalDiscovery, bool]:
    """Discover the intervals of ``cfg``'s base model; write ``intervals.json`` and ``similarity.png``.

    Returns:
        ``(discovery, reused)``: ``reused`` is True when the stored matrix was reused (no
        UNet pass ran).
    """
    from experts.discovery import discover_intervals, intervals_from_similarity, plot_similarity

    iv = cfg.intervals
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

    from nas.data import dataset_id, encode_latents, load_dataset

    _check_fixed_k(cfg, iv.grid_size)
    base = load_base(cfg, run, device, progress=progress)
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
    result = discover_intervals(
        base.unet, images, base.scheduler_config, grid_size=iv.grid_size, measure=iv.measure, aggregate=iv.aggregate,
        num_batches=iv.num_batches, batch_size=iv.batch_size, seed=_seed(cfg), projection_dim=iv.projection_dim,
        activation_module=iv.activation_module, device=device, unet_kwargs=base.unet_kwargs, settings=settings,
        progress=progress, **_segment_args(cfg),
    )
    result.save(run.intervals_path)
    plot_similarity(result, run.similarity_path)
    return result, False


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


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="measure the similarity matrix again even if intervals.json has it for these settings")


@register(
    "intervals",
    "discover the experts' timestep intervals (similarity matrix -> contiguous intervals)",
    arguments=_arguments,
    description="Measure the cosine similarity of the base model's denoising-loss gradients "
    "(intervals.measure=gradient; or of an intermediate activation) between intervals.grid_size "
    "training timesteps, using intervals.num_batches fixed seeded batches of intervals.batch_size "
    "images (per batch, then averaged; intervals.aggregate=mean averages the gradients first). "
    "Cost: grid_size x num_batches forward+backward passes (80 with the defaults). The grid "
    "is then split into contiguous intervals by dynamic programming (minimum within-interval "
    "cosine dissimilarity); the number of intervals is intervals.num_intervals, or with 'auto' the "
    "one chosen by intervals.criterion (elbow: explained dissimilarity minus penalty x (k-1)/(G-1); "
    "ch: Calinski-Harabasz) up to intervals.max_intervals. Writes runs/<name>/intervals.json and "
    "runs/<name>/similarity.png; a rerun with the same measurement settings reuses the matrix.",
)
def intervals_command(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from nas.device import resolve_device

    device = resolve_device(cfg.device)
    run = prepare_run(cfg)
    result, reused = run_intervals(cfg, run, device, force=bool(getattr(args, "force", False)))
    s = result.settings
    how = "reused stored matrix" if reused else f"measured in {result.runtime_s:.1f} s"
    sys.stdout.write(
        f"{result.measure} similarity on {len(result.timesteps)} timesteps "
        f"({s.get('num_passes', '?')} passes; {how}): {result.summary()}\n"
    )
    sys.stdout.write(format_intervals(result, cfg.sampling.sampler, cfg.sampling.num_steps) + "\n")
    sys.stdout.write(f"wrote {run.intervals_path} and {run.similarity_path}\n")
    return 0
