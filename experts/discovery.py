"""Interval discovery: timestep similarity -> contiguous intervals, stored and drawn.

:func:`discover_intervals` measures a ``G x G`` timestep similarity matrix on a grid of
training timesteps (:mod:`experts.similarity`), splits the grid into contiguous segments
(:mod:`experts.segmentation`) and turns them into :class:`~experts.intervals.Intervals`:
boundaries in training-timestep units, each the midpoint between the last grid timestep of one
segment and the first of the next. :class:`IntervalDiscovery` keeps the evidence (grid, matrix,
per-k costs and criterion scores, chosen k) and saves it as ``intervals.json``, which
``Intervals.load`` also reads (its keys are at the top level); :func:`plot_similarity` draws
the heatmap with the boundaries.

Example:
    >>> import numpy as np
    >>> S = np.full((8, 8), 0.2); S[:3, :3] = 0.9; S[3:, 3:] = 0.9; np.fill_diagonal(S, 1.0)
    >>> d = intervals_from_similarity(S, timestep_grid(1000, 8), 1000)
    >>> d.intervals.boundaries, d.num_intervals
    ((375,), 2)
    >>> IntervalDiscovery.from_json(d.to_json()) == d
    True
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from experts.intervals import Intervals, atomic_write_text
from experts.segmentation import Segmentation, segment_similarity

__all__ = [
    "IntervalDiscovery",
    "boundaries_from_starts",
    "discover_intervals",
    "intervals_from_similarity",
    "plot_similarity",
    "timestep_grid",
]

log = logging.getLogger(__name__)


def timestep_grid(num_train_timesteps: int, grid_size: int) -> tuple[int, ...]:
    """``grid_size`` evenly spaced training timesteps: the centres of equal bins of ``[0, T)``.

    Example:
        >>> timestep_grid(1000, 4)
        (125, 375, 625, 875)
    """
    T, G = int(num_train_timesteps), int(grid_size)
    if not 2 <= G <= T:
        raise ValueError(f"grid_size must be in [2, {T}] (num_train_timesteps), got {G}")
    grid = tuple(min(T - 1, int((2 * i + 1) * T // (2 * G))) for i in range(G))
    if any(b <= a for a, b in zip(grid, grid[1:])):  # pragma: no cover - impossible for G <= T
        raise ValueError(f"grid of {G} timesteps in [0, {T}) is not strictly increasing")
    return grid


def boundaries_from_starts(timesteps: Sequence[int], starts: Sequence[int]) -> tuple[int, ...]:
    """Interval boundaries (training timesteps) for segments starting at grid indices ``starts``.

    Each boundary ``b`` lies between the grid timesteps ``t0 < t1`` on either side of a cut,
    at their midpoint rounded up (so ``t0 < b <= t1``: ``t0`` stays below, ``t1`` above).

    Example:
        >>> boundaries_from_starts([25, 75, 125, 175], [0, 2])
        (100,)
    """
    ts = [int(t) for t in timesteps]
    out = []
    for s in list(starts)[1:]:
        t0, t1 = ts[s - 1], ts[s]
        out.append((t0 + t1 + 1) // 2)
    return tuple(out)


@dataclass(frozen=True)
class IntervalDiscovery:
    """Discovered intervals and the evidence for them (what ``intervals.json`` holds).

    Attributes:
        intervals: the chosen intervals (boundaries in training timesteps).
        timesteps: the grid of training timesteps the matrix is over, increasing.
        similarity: the ``G x G`` matrix as nested tuples (``matrix`` gives a numpy array).
        segmentation: segment starts on the grid, ``W(k)`` per k, criterion scores.
        measure: ``gradient``, ``activation``, or ``given`` (matrix supplied by the caller).
        settings: how the matrix was measured (grid, batches, seed, model and data identity);
            not compared by ``==``.
        runtime_s: seconds spent measuring the matrix; not compared.
    """

    intervals: Intervals
    timesteps: tuple[int, ...]
    similarity: tuple[tuple[float, ...], ...]
    segmentation: Segmentation
    measure: str = "given"
    settings: dict = field(default_factory=dict, compare=False)
    runtime_s: float = field(default=0.0, compare=False)

    @property
    def matrix(self) -> np.ndarray:
        """The similarity matrix, ``(G, G)`` float64."""
        return np.asarray(self.similarity, dtype=np.float64)

    @property
    def num_intervals(self) -> int:
        return self.intervals.num_intervals

    def summary(self) -> str:
        """One line: ``k`` and the spans, e.g. ``3 intervals (elbow): [0, 300) [300, 650) [650, 1000)``."""
        spans = " ".join(f"[{a}, {b})" for a, b in self.intervals.spans())
        k = self.num_intervals
        return f"{k} interval{'s' if k != 1 else ''} ({self.segmentation.criterion}): {spans}"

    def to_dict(self) -> dict:
        out = self.intervals.to_dict()  # num_train_timesteps, boundaries, spans at the top: Intervals.load reads it
        out.update({
            "num_intervals": self.num_intervals,
            "measure": self.measure,
            "criterion": self.segmentation.criterion,
            "timesteps": list(self.timesteps),
            "similarity": [list(r) for r in self.similarity],
            "segmentation": self.segmentation.to_dict(),
            "settings": _plain(self.settings),
            "runtime_s": float(self.runtime_s),
        })
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "IntervalDiscovery":
        try:
            return cls(
                intervals=Intervals.from_dict(dict(data)),
                timesteps=tuple(int(t) for t in data["timesteps"]),
                similarity=tuple(tuple(float(v) for v in row) for row in data["similarity"]),
                segmentation=Segmentation.from_dict(data["segmentation"]),
                measure=str(data.get("measure", "given")),
                settings=dict(data.get("settings", {})),
                runtime_s=float(data.get("runtime_s", 0.0)),
            )
        except KeyError as e:
            raise ValueError(f"intervals JSON is missing key {e.args[0]!r} (not written by interval discovery?)") from None

    @classmethod
    def from_json(cls, text: str) -> "IntervalDiscovery":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write ``intervals.json`` (atomically)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "IntervalDiscovery":
        return cls.from_json(Path(path).read_text())


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def intervals_from_similarity(
    similarity: np.ndarray | Sequence[Sequence[float]],
    timesteps: Sequence[int],
    num_train_timesteps: int,
    *,
    num_intervals: Union[int, Literal["auto"]] = "auto",
    max_intervals: int = 6,
    criterion: str = "elbow",
    penalty: float = 1.0,
    min_grid_points: int = 1,
    measure: str = "given",
    settings: Mapping[str, Any] | None = None,
    runtime_s: float = 0.0,
) -> IntervalDiscovery:
    """Segment a similarity matrix over ``timesteps`` into contiguous intervals.

    Args:
        similarity: ``(G, G)`` over the increasing grid ``timesteps``.
        num_train_timesteps: ``T`` of the training schedule.
        num_intervals: fixed ``k`` or ``"auto"`` (``criterion`` over ``1..max_intervals``).
        criterion, penalty: see :mod:`experts.segmentation`.
        min_grid_points: the fewest grid timesteps an interval may hold (``min_size`` there).

    Example:
        >>> S = np.kron(np.eye(2), np.ones((2, 2)))  # timesteps {100, 300} alike, {500, 700} alike
        >>> intervals_from_similarity(S, [100, 300, 500, 700], 800, num_intervals=2).intervals.boundaries
        (400,)
    """
    S = np.asarray(similarity, dtype=np.float64)
    ts = tuple(int(t) for t in timesteps)
    if S.shape != (len(ts), len(ts)):
        raise ValueError(f"similarity is {S.shape} but there are {len(ts)} timesteps")
    if any(b <= a for a, b in zip(ts, ts[1:])) or (ts and not (0 <= ts[0] and ts[-1] < num_train_timesteps)):
        raise ValueError(f"timesteps must increase within [0, {num_train_timesteps}), got {list(ts)}")
    seg = segment_similarity(S, num_segments=num_intervals, max_segments=max_intervals, criterion=criterion,
                             penalty=penalty, min_size=min_grid_points)
    intervals = Intervals(int(num_train_timesteps), boundaries_from_starts(ts, seg.starts))
    return IntervalDiscovery(
        intervals=intervals, timesteps=ts, similarity=tuple(tuple(float(v) for v in row) for row in S),
        segmentation=seg, measure=measure, settings=dict(settings or {}), runtime_s=float(runtime_s),
    )


def discover_intervals(
    unet: Any,
    images: Any,
    scheduler_config: Mapping[str, Any] | Any,
    *,
    grid_size: int = 20,
    measure: str = "gradient",
    aggregate: str = "per_batch",
    num_batches: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    projection_dim: Union[int, Literal["auto"], None] = "auto",
    activation_module: str = "mid_block",
    num_intervals: Union[int, Literal["auto"]] = "auto",
    max_intervals: int = 6,
    criterion: str = "elbow",
    penalty: float = 1.0,
    min_grid_points: int = 2,
    device: Any = None,
    unet_kwargs: Any = None,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
    labels: Any = None,
) -> IntervalDiscovery:
    """Measure timestep similarity on an even grid and split it into contiguous intervals.

    Cost: ``grid_size * num_batches`` UNet passes of ``batch_size`` images, forward+backward
    for ``measure="gradient"`` (the defaults: 20 x 4 = 80), forward only for ``"activation"``.

    Args:
        unet: the pretrained denoiser (diffusers UNet, or a supernet at its active arch).
        images: ``(N, C, H, W)`` data the UNet denoises (latents for latent models), in its range.
        scheduler_config: the training scheduler's config (or the scheduler).
        grid_size: ``G``, grid timesteps (bin centres of ``[0, T)``).
        measure, aggregate, num_batches, batch_size, seed, projection_dim, activation_module: see
            :func:`experts.similarity.timestep_similarity`.
        num_intervals, max_intervals, criterion, penalty, min_grid_points: see
            :func:`intervals_from_similarity` (``min_grid_points=2`` here: no interval rests on
            one grid timestep).
        settings: extra provenance stored in the record (model/data identity, ...).
        labels: (N,) class labels of ``images`` for a class-conditional UNet (each batch is
            measured with its images' labels).

    Example::

        >>> d = discover_intervals(base.unet, images, base.scheduler_config)  # doctest: +SKIP
        >>> d.save("runs/x/intervals.json"); plot_similarity(d, "runs/x/similarity.png")  # doctest: +SKIP
    """
    from experts.similarity import timestep_similarity
    from experts.timestep_batches import make_training_scheduler

    scheduler = make_training_scheduler(scheduler_config)
    T = int(scheduler.config.num_train_timesteps)
    grid = timestep_grid(T, grid_size)
    num_params = sum(p.numel() for p in unet.parameters() if p.dtype.is_floating_point)
    t0 = time.perf_counter()
    S = timestep_similarity(
        unet, images, scheduler, grid, measure=measure, aggregate=aggregate, num_batches=num_batches,
        batch_size=batch_size, seed=seed,
        projection_dim=projection_dim, activation_module=activation_module, device=device, unet_kwargs=unet_kwargs,
        labels=labels, progress=progress,
    )
    runtime_s = time.perf_counter() - t0
    info = _similarity_record(measure, aggregate, grid_size, num_batches, batch_size, seed, projection_dim,
                              activation_module, num_params, device)
    info.update(dict(settings or {}))
    log.info("similarity measured in %.1f s (%d passes)", runtime_s, grid_size * num_batches)
    return intervals_from_similarity(
        S, grid, T, num_intervals=num_intervals, max_intervals=max_intervals, criterion=criterion, penalty=penalty,
        min_grid_points=min_grid_points, measure=measure, settings=info, runtime_s=runtime_s,
    )


def _similarity_record(measure: str, aggregate: str, grid_size: int, num_batches: int, batch_size: int, seed: int,
                       projection_dim: Any, activation_module: str, num_params: int, device: Any) -> dict[str, Any]:
    """How the similarity matrix was measured (stored in the discovery's settings)."""
    from experts.sketch import resolve_projection_dim

    return {
        "grid_size": grid_size, "measure": measure, "aggregate": aggregate if measure == "gradient" else None,
        "num_batches": num_batches, "batch_size": batch_size,
        "seed": seed, "projection_dim": projection_dim,
        "projection_dim_used": (
            resolve_projection_dim(projection_dim, num_params, grid_size) if measure == "gradient" else None
        ),
        "activation_module": activation_module if measure == "activation" else None,
        "num_passes": grid_size * num_batches, "backward": measure == "gradient", "num_parameters": num_params,
        "device": str(device) if device is not None else None,
    }


def plot_similarity(discovery: IntervalDiscovery, path: str | Path, title: str | None = None) -> Path:
    """Heatmap of the similarity matrix with the interval boundaries, and the cost curve.

    Left: the matrix (grid timesteps on both axes, low t at the top left), the chosen intervals
    outlined on the diagonal and their boundaries drawn across. Right: ``W(k)`` (within-interval
    dissimilarity of the optimal k-split) and the criterion's score, chosen ``k`` marked.
    Written with matplotlib's Agg backend (no display needed).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11.5, 5.2), gridspec_kw={"width_ratios": [1.25, 1]})
    _draw_matrix(fig, ax, discovery, title)
    _draw_costs(ax2, discovery)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def _draw_matrix(fig: Any, ax: Any, discovery: IntervalDiscovery, title: str | None) -> None:
    """The similarity heatmap with the intervals outlined and labelled."""
    from matplotlib.patches import Rectangle

    S = discovery.matrix
    ts = discovery.timesteps
    G = len(ts)
    seg = discovery.segmentation
    vmin = float(min(S.min(), 0.0))
    im = ax.imshow(S, cmap="viridis", vmin=vmin, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    step = max(1, G // 10)
    ticks = list(range(0, G, step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(ts[i]) for i in ticks], rotation=90, fontsize=8)
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(ts[i]) for i in ticks], fontsize=8)
    ax.set_xlabel("training timestep t")
    ax.set_ylabel("training timestep t")
    ends = (*seg.starts[1:], G)
    for s in seg.starts[1:]:
        ax.axhline(s - 0.5, color="white", lw=1.0, ls="--", alpha=0.9)
        ax.axvline(s - 0.5, color="white", lw=1.0, ls="--", alpha=0.9)
    for a, b in zip(seg.starts, ends):
        ax.add_patch(Rectangle((a - 0.5, a - 0.5), b - a, b - a, fill=False, edgecolor="red", lw=2.0))
    spans = discovery.intervals.spans()
    for (a, b), (lo, hi) in zip(zip(seg.starts, ends), spans):
        ax.text((a + b - 1) / 2, (a + b - 1) / 2, f"[{lo},{hi})", color="white", ha="center", va="center",
                fontsize=8, fontweight="bold")
    ax.set_title(title or f"{discovery.measure} similarity, {discovery.num_intervals} intervals "
                          f"({seg.criterion})", fontsize=10)


def _draw_costs(ax2: Any, discovery: IntervalDiscovery) -> None:
    """``W(k)`` per number of intervals, the chosen ``k`` and the criterion's score."""
    seg = discovery.segmentation
    ks = list(range(1, len(seg.costs) + 1))
    ax2.plot(ks, seg.costs, "o-", color="tab:blue", label="W(k): within-interval dissimilarity")
    k = discovery.num_intervals
    if k <= len(seg.costs):
        ax2.plot([k], [seg.costs[k - 1]], "s", color="red", ms=10, mfc="none", mew=2, label=f"chosen k = {k}")
    ax2.set_xlabel("number of intervals k")
    ax2.set_ylabel("W(k)")
    ax2.set_xticks(ks)
    scored = [(kk, s) for kk, s in zip(ks, seg.scores) if s is not None and np.isfinite(s)]
    if scored:
        ax3 = ax2.twinx()
        ax3.plot([a for a, _ in scored], [b for _, b in scored], "^--", color="tab:orange",
                 label=f"{seg.criterion} score")
        ax3.set_ylabel(f"{seg.criterion} score", color="tab:orange")
        lines = ax2.get_legend_handles_labels()
        lines3 = ax3.get_legend_handles_labels()
        ax2.legend(lines[0] + lines3[0], lines[1] + lines3[1], fontsize=8, loc="upper right")
    else:
        ax2.legend(fontsize=8, loc="upper right")
    ax2.set_title("optimal split cost per k", fontsize=10)
