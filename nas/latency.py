"""Wall-clock latency of a callable, with CUDA synchronisation, alone or side by side.

:func:`compare_latency` interleaves the candidates round-robin (and rotates the order every
round), so a change of machine load hits all of them alike; compare numbers only within one
call. :func:`compare_latency_batches` does the same over several batch sizes at once (every
candidate at every batch size in one rotation), and :func:`per_image_by_batch` turns its result
into per-image latencies and speed-ups against a reference candidate. Tests never time things;
benchmarks do.

Example::

    >>> r = measure_latency_ms(lambda: sum(range(1000)), repeats=3, warmup=1)
    >>> r.repeats, r.min_ms <= r.median_ms
    (3, True)
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one callable over ``repeats`` timed calls, in milliseconds."""

    median_ms: float
    mean_ms: float
    min_ms: float
    repeats: int

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "mean_ms": self.mean_ms, "min_ms": self.min_ms,
                "repeats": self.repeats}


def _sync(device: str | torch.device | None) -> None:
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps" and hasattr(torch, "mps"):  # pragma: no cover - Apple only
        torch.mps.synchronize()


def _timed_ms(fn: Callable[[], object], device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def _result(times_ms: list[float]) -> LatencyResult:
    return LatencyResult(median_ms=statistics.median(times_ms), mean_ms=statistics.fmean(times_ms),
                         min_ms=min(times_ms), repeats=len(times_ms))


def _check(repeats: int, warmup: int) -> None:
    if int(repeats) < 1 or int(warmup) < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")


def measure_latency_ms(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 2,
                       device: str | torch.device | None = None) -> LatencyResult:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed.

    ``device``: synchronise that device around each call (CUDA/MPS); None synchronises CUDA if
    it is in use.

    Example::

        >>> measure_latency_ms(lambda: None, repeats=2, warmup=0).repeats
        2
    """
    _check(repeats, warmup)
    for _ in range(int(warmup)):
        fn()
        _sync(device)
    return _result([_timed_ms(fn, device) for _ in range(int(repeats))])


def compare_latency(fns: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 2,
                    device: str | torch.device | None = None) -> dict[str, LatencyResult]:
    """Measure several callables side by side: round-robin, order rotated every round.

    Returns a dict in the input's key order.

    Example::

        >>> out = compare_latency({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=1)
        >>> sorted(out), out["a"].repeats
        (['a', 'b'], 3)
    """
    _check(repeats, warmup)
    names = list(fns)
    if not names:
        return {}
    for _ in range(int(warmup)):
        for name in names:
            fns[name]()
            _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(int(repeats)):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(_timed_ms(fns[name], device))
    return {name: _result(times[name]) for name in names}


def compare_latency_batches(make: Callable[[str, int], Callable[[], object]], names: Sequence[str],
                            batch_sizes: Sequence[int], *, repeats: int = 5, warmup: int = 2,
                            device: str | torch.device | None = None) -> dict[str, dict[int, LatencyResult]]:
    """:func:`compare_latency` of ``make(name, batch_size)`` for every name and batch size, all in
    one round-robin (so machine noise hits every batch size of every candidate alike).

    Returns ``{name: {batch_size: LatencyResult}}`` (whole calls, not per image).

    Raises:
        ValueError: a batch size below 1 or repeated, or a name repeated.

    Example::

        >>> out = compare_latency_batches(lambda n, b: (lambda: None), ["a", "b"], [1, 4], repeats=2, warmup=0)
        >>> sorted(out), sorted(out["a"]), out["b"][4].repeats
        (['a', 'b'], [1, 4], 2)
    """
    sizes = [int(b) for b in batch_sizes]
    if any(b < 1 for b in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"batch sizes must be >= 1 and distinct, got {sizes}")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct, got {list(names)}")
    fns = {(n, b): make(n, b) for b in sizes for n in names}
    keyed = {f"{i}": fn for i, fn in enumerate(fns.values())}
    res = compare_latency(keyed, repeats=repeats, warmup=warmup, device=device)
    out: dict[str, dict[int, LatencyResult]] = {n: {} for n in names}
    for i, (n, b) in enumerate(fns):
        out[n][b] = res[f"{i}"]
    return out


def per_image_by_batch(timing: dict[str, dict[int, LatencyResult]], name: str,
                       reference: str) -> dict[str, dict[str, float]]:
    """``{"<batch size>": {ms_per_image, reference_ms_per_image, speedup}}`` of ``name`` from a
    :func:`compare_latency_batches` result (medians divided by the batch; speed-up = reference /
    ``name``, both from the same rotation). Keys are strings, so the dict survives JSON.

    Example::

        >>> t = {"base": {4: LatencyResult(8.0, 8.0, 8.0, 1)}, "m": {4: LatencyResult(4.0, 4.0, 4.0, 1)}}
        >>> per_image_by_batch(t, "m", "base")
        {'4': {'ms_per_image': 1.0, 'reference_ms_per_image': 2.0, 'speedup': 2.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for b in sorted(timing[name]):
        ms = timing[name][b].median_ms / b
        ref = timing[reference][b].median_ms / b
        out[str(b)] = {"ms_per_image": ms, "reference_ms_per_image": ref, "speedup": ref / ms}
    return out
