"""Contiguous segmentation of an ordered timestep grid from a similarity matrix.

Given a ``G x G`` similarity matrix ``S`` over an increasing grid of timesteps (cosine
similarities: unit diagonal, values in [-1, 1]), split the grid into ``k`` contiguous segments
that are as internally similar as possible.

**Objective.** With the cosine dissimilarity ``D = 1 - S``, the cost of a segment ``A`` is

    W(A) = (1 / |A|) * sum_{a in A} sum_{b in A} D[a, b]

and the cost of a segmentation is the sum over its segments. When ``S`` is the Gram matrix of
unit vectors ``u_a`` (exactly what a cosine-similarity matrix is), ``W(A)`` equals the
within-segment sum of squared distances of the ``u_a`` to their mean (``||u_a - u_b||^2 =
2 D[a, b]``), so minimising it is k-means on the normalised gradients constrained to contiguous
segments (Fisher's optimal 1-D partition). Dividing by ``|A|`` is what stops one big segment
from winning; summing over segments lets the cost fall as ``k`` grows (``W(k) = 0`` at ``k = G``),
so the number of segments is a separate choice (below). The optimum for every ``k`` comes from
one dynamic programme, ``O(k_max * G^2)``. ``min_size`` forbids segments of fewer grid points
(e.g. 2: no interval rests on a single noisy grid timestep); then ``k <= G // min_size``.

**Choosing k** (``num_segments="auto"``), over ``k`` in ``[1, max_segments]``:

- ``elbow`` (default): maximise ``R2(k) - penalty * (k - 1) / (G - 1)``, with the explained
  fraction ``R2(k) = 1 - W(k) / W(1)``. This is the point of the cost curve farthest below the
  chord from ``(1, W(1))`` to ``(G, 0)`` (the "knee"): an extra segment is kept only if it
  explains more than its even share ``1 / (G - 1)`` of the dissimilarity (``penalty`` scales
  that share). If no ``k > 1`` beats ``k = 1`` the grid stays one segment.
- ``ch``: the Calinski-Harabasz index ``((W(1) - W(k)) / (k - 1)) / (W(k) / (G - k))``, the
  classic ratio of between- to within-cluster dispersion, maximised over ``k >= 2`` (it never
  chooses ``k = 1``).

Ties go to the smaller ``k``.

Example:
    >>> import numpy as np
    >>> S = np.full((6, 6), 0.1); S[:2, :2] = 0.9; S[2:, 2:] = 0.9; np.fill_diagonal(S, 1.0)
    >>> seg = segment_similarity(S)
    >>> seg.num_segments, seg.starts, seg.labels()
    (2, (0, 2), (0, 0, 1, 1, 1, 1))
    >>> segment_similarity(S, num_segments=3).num_segments
    3
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np

__all__ = [
    "CRITERIA",
    "Segmentation",
    "choose_num_segments",
    "optimal_segmentations",
    "segment_similarity",
    "segmentation_cost",
]

CRITERIA = ("elbow", "ch")
Criterion = Literal["elbow", "ch"]


@dataclass(frozen=True)
class Segmentation:
    """The chosen contiguous segmentation and the evidence for it.

    Attributes:
        starts: grid index where each segment starts (the first is 0), increasing.
        grid_size: ``G``, the number of grid points.
        costs: ``W(k)`` of the optimal segmentation for ``k = 1 .. len(costs)``.
        scores: the criterion's value for each ``k`` (``None`` where it is undefined or
            outside ``[1, max_segments]``); empty when ``k`` was fixed by the user.
        criterion: ``elbow``, ``ch``, or ``fixed`` (``k`` given by the user).
        penalty: the elbow penalty used (1.0 unless changed).
        min_size: the fewest grid points a segment was allowed.
    """

    starts: tuple[int, ...]
    grid_size: int
    costs: tuple[float, ...]
    scores: tuple[float | None, ...] = ()
    criterion: str = "fixed"
    penalty: float = 1.0
    min_size: int = 1

    @property
    def num_segments(self) -> int:
        return len(self.starts)

    @property
    def cost(self) -> float:
        """``W(k)`` of this segmentation."""
        return self.costs[self.num_segments - 1]

    def labels(self) -> tuple[int, ...]:
        """Segment index of every grid point."""
        out = []
        ends = (*self.starts[1:], self.grid_size)
        for i, (a, b) in enumerate(zip(self.starts, ends)):
            out.extend([i] * (b - a))
        return tuple(out)

    def to_dict(self) -> dict:
        return {
            "starts": list(self.starts), "grid_size": self.grid_size, "num_segments": self.num_segments,
            "costs": list(self.costs), "scores": list(self.scores), "criterion": self.criterion,
            "penalty": self.penalty, "min_size": self.min_size,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Segmentation":
        return cls(
            starts=tuple(int(s) for s in data["starts"]), grid_size=int(data["grid_size"]),
            costs=tuple(float(c) for c in data["costs"]),
            scores=tuple(None if s is None else float(s) for s in data.get("scores", ())),
            criterion=str(data.get("criterion", "fixed")), penalty=float(data.get("penalty", 1.0)),
            min_size=int(data.get("min_size", 1)),
        )


def _check_matrix(similarity: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    S = np.asarray(similarity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 1:
        raise ValueError(f"similarity must be a square G x G matrix, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError("similarity matrix has non-finite entries")
    return S


def _segment_cost_table(S: np.ndarray, min_size: int = 1) -> np.ndarray:
    """``C[i, j]`` = cost of the segment ``[i, j)`` (``j - i >= min_size``), ``inf`` elsewhere. (G+1, G+1)."""
    G = S.shape[0]
    D = 1.0 - 0.5 * (S + S.T)  # (G, G) cosine dissimilarity, symmetrised
    P = np.zeros((G + 1, G + 1))
    P[1:, 1:] = D.cumsum(0).cumsum(1)  # P[i, j] = sum D[:i, :j]
    i = np.arange(G + 1)[:, None]
    j = np.arange(G + 1)[None, :]
    block = P[j, j] - P[i, j] - P[j, i] + P[i, i]  # sum of D over [i, j) x [i, j)
    with np.errstate(divide="ignore", invalid="ignore"):
        C = np.where(j - i >= max(1, int(min_size)), block / np.maximum(j - i, 1), np.inf)
    return C


def segmentation_cost(similarity: np.ndarray | Sequence[Sequence[float]], starts: Sequence[int]) -> float:
    """Cost ``sum_A W(A)`` of the segmentation whose segments start at ``starts``.

    Example:
        >>> import numpy as np
        >>> segmentation_cost(np.eye(3), [0])  # three orthogonal unit vectors in one segment
        2.0
    """
    S = _check_matrix(similarity)
    G = S.shape[0]
    st = list(starts)
    if not st or st[0] != 0 or any(b <= a for a, b in zip(st, st[1:])) or st[-1] >= G:
        raise ValueError(f"starts must be increasing, begin at 0 and stay below {G}, got {st}")
    C = _segment_cost_table(S)
    return float(sum(C[a, b] for a, b in zip(st, [*st[1:], G])))


def optimal_segmentations(
    similarity: np.ndarray | Sequence[Sequence[float]], max_segments: int | None = None, min_size: int = 1
) -> tuple[list[float], list[tuple[int, ...]]]:
    """Optimal contiguous segmentations for every ``k = 1 .. max_segments`` (default ``G // min_size``)
    with at least ``min_size`` grid points per segment.

    Dynamic programme: ``F[k][j] = min_i F[k-1][i] + W([i, j))``; ``O(max_segments * G^2)``.

    Returns:
        ``(costs, starts)``: ``costs[k-1] = W(k)`` and ``starts[k-1]`` the segment starts of an
        optimal ``k``-segmentation (ties: the earliest boundaries).

    Example:
        >>> import numpy as np
        >>> S = np.kron(np.eye(2), np.ones((2, 2)))  # two identical pairs, orthogonal to each other
        >>> costs, starts = optimal_segmentations(S)
        >>> [round(c, 6) for c in costs], starts[1]
        ([2.0, 0.0, 0.0, 0.0], (0, 2))
    """
    S = _check_matrix(similarity)
    G = S.shape[0]
    m = int(min_size)
    if not 1 <= m <= G:
        raise ValueError(f"min_size must be in [1, {G}], got {m}")
    K = G // m if max_segments is None else int(max_segments)
    if not 1 <= K <= G // m:
        raise ValueError(f"max_segments must be in [1, {G // m}] (G={G}, min_size={m}), got {K}")
    C = _segment_cost_table(S, m)  # (G+1, G+1)
    F = np.full((K + 1, G + 1), np.inf)
    arg = np.zeros((K + 1, G + 1), dtype=np.int64)
    F[0, 0] = 0.0
    for k in range(1, K + 1):
        # total[i, j] = F[k-1, i] + C[i, j]; first minimiser along i = earliest boundary
        total = F[k - 1][:, None] + C  # (G+1, G+1)
        arg[k] = np.argmin(total, axis=0)
        F[k] = total[arg[k], np.arange(G + 1)]
    costs: list[float] = []
    starts: list[tuple[int, ...]] = []
    for k in range(1, K + 1):
        cuts = []
        j = G
        for kk in range(k, 0, -1):
            i = int(arg[kk, j])
            cuts.append(i)
            j = i
        starts.append(tuple(reversed(cuts)))
        costs.append(max(0.0, float(F[k, G])))
    return costs, starts


def choose_num_segments(
    costs: Sequence[float],
    grid_size: int,
    criterion: str = "elbow",
    max_segments: int = 6,
    penalty: float = 1.0,
) -> tuple[int, list[float | None]]:
    """The number of segments picked by ``criterion`` from the optimal costs ``W(1..)``.

    See the module docstring for the criteria. ``costs`` must hold at least
    ``min(max_segments, grid_size)`` values.

    Returns:
        ``(k, scores)`` with ``scores[k-1]`` the criterion at ``k`` (``None`` if undefined).

    Example:
        >>> choose_num_segments([10.0, 2.0, 1.8, 1.7], grid_size=4, max_segments=4)[0]
        2
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    G = int(grid_size)
    K = min(int(max_segments), G, len(costs))
    if K < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    W = [float(c) for c in costs]
    W1 = W[0]
    scores: list[float | None] = [None] * len(W)
    if criterion == "elbow":
        if W1 <= 1e-12:  # every grid point alike: nothing to split
            scores[0] = 0.0
            return 1, scores
        for k in range(1, K + 1):
            share = (k - 1) / (G - 1) if G > 1 else 0.0
            scores[k - 1] = (1.0 - W[k - 1] / W1) - float(penalty) * share
    else:  # Calinski-Harabasz
        if K < 2:
            return 1, scores
        for k in range(2, K + 1):
            within = W[k - 1]
            between = max(W1 - within, 0.0)
            if k >= G or within <= 1e-12 * max(W1, 1e-300):
                scores[k - 1] = math.inf if between > 0 else 0.0
            else:
                scores[k - 1] = (between / (k - 1)) / (within / (G - k))
    best_k, best = 1, -math.inf
    for k in range(1, K + 1):
        s = scores[k - 1]
        if s is not None and s > best + 1e-12:  # strict: ties keep the smaller k
            best_k, best = k, s
    return best_k, scores


def segment_similarity(
    similarity: np.ndarray | Sequence[Sequence[float]],
    num_segments: Union[int, Literal["auto"]] = "auto",
    max_segments: int = 6,
    criterion: str = "elbow",
    penalty: float = 1.0,
    min_size: int = 1,
) -> Segmentation:
    """Split the ordered grid into contiguous segments of similar timesteps.

    Args:
        similarity: ``G x G`` similarity matrix over an increasing timestep grid.
        num_segments: a fixed ``k``, or ``"auto"`` to choose it with ``criterion``.
        max_segments: the largest ``k`` considered by ``"auto"``.
        criterion: ``elbow`` or ``ch`` (see the module docstring).
        penalty: the elbow criterion's weight on the per-segment share ``(k-1)/(G-1)``.
        min_size: the fewest grid points per segment (``auto`` then considers ``k <= G // min_size``).

    Raises:
        ValueError: a fixed ``k`` outside ``[1, G // min_size]``, a bad matrix or criterion.

    Example:
        >>> import numpy as np
        >>> S = np.full((9, 9), 0.0); np.fill_diagonal(S, 1.0)
        >>> for a, b in ((0, 3), (3, 5), (5, 9)): S[a:b, a:b] = 1.0
        >>> segment_similarity(S).starts
        (0, 3, 5)
    """
    S = _check_matrix(similarity)
    G = S.shape[0]
    if num_segments == "auto":
        if max_segments < 1:
            raise ValueError(f"max_segments must be >= 1, got {max_segments}")
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
        if not 1 <= min_size <= G:
            raise ValueError(f"min_size must be in [1, {G}], got {min_size}")
        costs, starts = optimal_segmentations(S, min(max_segments, G // min_size), min_size)
        k, scores = choose_num_segments(costs, G, criterion, max_segments, penalty)
        return Segmentation(starts[k - 1], G, tuple(costs), tuple(scores), criterion, float(penalty), int(min_size))
    if isinstance(num_segments, bool) or not isinstance(num_segments, (int, np.integer)):
        raise ValueError(f"num_segments must be an int or 'auto', got {num_segments!r}")
    k = int(num_segments)
    if not 1 <= min_size <= G:
        raise ValueError(f"min_size must be in [1, {G}], got {min_size}")
    if not 1 <= k <= G // min_size:
        raise ValueError(
            f"num_segments must be in [1, {G // min_size}] (grid size {G}, min_size {min_size}), got {k}"
        )
    costs, starts = optimal_segmentations(S, k, min_size)
    return Segmentation(starts[k - 1], G, tuple(costs), (), "fixed", float(penalty), int(min_size))
