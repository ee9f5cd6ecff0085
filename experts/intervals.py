"""Timestep intervals: which expert owns which denoising timestep.

Boundaries are in *training* timestep units (what ``scheduler.timesteps`` holds), so one
``Intervals`` works with any sampler and any number of sampling steps.

Example:
    >>> iv = Intervals(num_train_timesteps=1000, boundaries=(300, 700))
    >>> [iv.index(t) for t in (0, 299, 300, 699, 700, 999)]
    [0, 0, 1, 1, 2, 2]
    >>> Intervals.from_json(iv.to_json()) == iv
    True
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Intervals", "atomic_write_text", "boundaries_from_labels"]


@dataclass(frozen=True)
class Intervals:
    """Contiguous intervals ``[0, b0), [b0, b1), ..., [b_{k-1}, T)`` of training timesteps.

    Attributes:
        num_train_timesteps: T, the training schedule length (e.g. 1000).
        boundaries: strictly increasing interior boundaries, each in ``(0, T)``.
    """

    num_train_timesteps: int
    boundaries: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        T = int(self.num_train_timesteps)
        if T < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {T}")
        b = tuple(int(x) for x in self.boundaries)
        for x in b:
            if not 0 < x < T:
                raise ValueError(f"interval boundary {x} is outside (0, {T})")
        if any(b2 <= b1 for b1, b2 in zip(b, b[1:])):
            raise ValueError(f"interval boundaries must be strictly increasing, got {list(b)}")
        object.__setattr__(self, "num_train_timesteps", T)
        object.__setattr__(self, "boundaries", b)

    @property
    def num_intervals(self) -> int:
        """Number of intervals (= number of experts)."""
        return len(self.boundaries) + 1

    def __len__(self) -> int:
        return self.num_intervals

    def spans(self) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` half-open ranges of training timesteps, low t first."""
        edges = (0, *self.boundaries, self.num_train_timesteps)
        return list(zip(edges[:-1], edges[1:]))

    def index(self, t: int | float) -> int:
        """Interval (expert) index owning training timestep ``t``."""
        t = float(t)
        if not 0 <= t < self.num_train_timesteps + 1e-6:
            raise ValueError(f"timestep {t} is outside [0, {self.num_train_timesteps})")
        i = 0
        for b in self.boundaries:
            if t >= b:
                i += 1
        return i

    def steps_per_interval(self, timesteps: Iterable[int | float]) -> list[int]:
        """How many of a sampler's ``timesteps`` fall in each interval (trajectory weights)."""
        counts = [0] * self.num_intervals
        for t in timesteps:
            counts[self.index(float(t))] += 1
        return counts

    @classmethod
    def uniform(cls, num_train_timesteps: int, num_intervals: int) -> "Intervals":
        """Equal-width intervals (a manual baseline)."""
        if not 1 <= num_intervals <= num_train_timesteps:
            raise ValueError(f"num_intervals must be in [1, {num_train_timesteps}], got {num_intervals}")
        b = tuple(round(num_train_timesteps * k / num_intervals) for k in range(1, num_intervals))
        return cls(num_train_timesteps, b)

    def to_dict(self) -> dict:
        return {"num_train_timesteps": self.num_train_timesteps, "boundaries": list(self.boundaries),
                "spans": [list(s) for s in self.spans()]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Intervals":
        """From :meth:`to_dict`'s form; a ``ValueError`` saying what is wrong for anything else.

        Stored ``spans`` (when present) must be the ones the boundaries give: overlapping, gapped
        or reordered spans are refused rather than silently replaced.

        Example:
            >>> Intervals.from_dict({"num_train_timesteps": 10, "boundaries": [4], "spans": [[0, 6], [4, 10]]})
            Traceback (most recent call last):
            ...
            ValueError: intervals JSON: spans [[0, 6], [4, 10]] overlap or disagree with boundaries [4] (expected [[0, 4], [4, 10]])
        """
        if not isinstance(data, dict):
            raise ValueError(f"intervals JSON must be an object, got {type(data).__name__}")
        try:
            raw = data.get("boundaries", ())
            if not isinstance(raw, (list, tuple)):
                raise ValueError(f"intervals JSON: boundaries must be a list, got {raw!r}")
            out = cls(int(data["num_train_timesteps"]), tuple(_as_int(x) for x in raw))
        except KeyError as e:
            raise ValueError(f"intervals JSON is missing key {e.args[0]!r}") from None
        except TypeError as e:
            raise ValueError(f"intervals JSON: {e}") from None
        spans = data.get("spans")
        if spans is not None:
            expected = [list(s) for s in out.spans()]
            try:
                given = [[int(a), int(b)] for a, b in spans]
            except (TypeError, ValueError):
                raise ValueError(f"intervals JSON: spans must be [start, end] pairs, got {spans!r}") from None
            if given != expected:
                raise ValueError(f"intervals JSON: spans {given} overlap or disagree with boundaries "
                                 f"{list(out.boundaries)} (expected {expected})")
        return out

    @classmethod
    def from_json(cls, text: str) -> "Intervals":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically)."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> "Intervals":
        return cls.from_json(Path(path).read_text())


def _as_int(x: object) -> int:
    """An integer boundary; ``ValueError`` for fractions, booleans and non-numbers."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or int(x) != x:
        raise ValueError(f"intervals JSON: boundary {x!r} is not an integer timestep")
    return int(x)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a ``.tmp`` file and a rename: a kill mid-write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def boundaries_from_labels(labels: Sequence[int], timesteps: Sequence[int]) -> tuple[int, ...]:
    """Interior boundaries from per-timestep interval labels on an increasing timestep grid."""
    out = []
    for (t0, l0), (t1, l1) in zip(zip(timesteps, labels), zip(timesteps[1:], labels[1:])):
        if l1 != l0:
            out.append(int(round((t0 + t1) / 2)))
    return tuple(out)
