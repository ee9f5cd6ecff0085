"""nas.latency: structure of the measurements (tests never assert on timings)."""

from __future__ import annotations

import pytest

from nas.latency import LatencyResult, compare_latency, compare_latency_batches, measure_latency_ms, per_image_by_batch


def test_measure_counts_warmup_and_repeats():
    calls = []
    r = measure_latency_ms(lambda: calls.append(1), repeats=4, warmup=3)
    assert isinstance(r, LatencyResult)
    assert len(calls) == 7 and r.repeats == 4
    assert 0 <= r.min_ms <= r.median_ms and r.min_ms <= r.mean_ms
    assert set(r.to_dict()) == {"median_ms", "mean_ms", "min_ms", "repeats"}


def test_compare_interleaves_round_robin_with_rotation():
    order: list[str] = []
    fns = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    out = compare_latency(fns, repeats=3, warmup=1)
    assert list(out) == ["a", "b", "c"]
    assert all(r.repeats == 3 for r in out.values())
    assert order[:3] == ["a", "b", "c"]  # warm-up
    timed = order[3:]
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one later


def test_compare_with_nothing_and_bad_counts():
    assert compare_latency({}) == {}
    with pytest.raises(ValueError, match="repeats"):
        measure_latency_ms(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        compare_latency({"a": lambda: None}, warmup=-1)


def test_compare_batches_times_every_name_at_every_size_in_one_rotation():
    made: list[tuple[str, int]] = []
    order: list[tuple[str, int]] = []

    def make(name: str, bs: int):
        made.append((name, bs))
        return lambda: order.append((name, bs))

    out = compare_latency_batches(make, ["base", "m"], [1, 64], repeats=2, warmup=0)
    assert sorted(made) == [("base", 1), ("base", 64), ("m", 1), ("m", 64)]
    assert {n: sorted(v) for n, v in out.items()} == {"base": [1, 64], "m": [1, 64]}
    assert all(r.repeats == 2 for v in out.values() for r in v.values())
    # one rotation over all four: round 2 starts one later, so both sizes of both names interleave
    assert order[:4] == [("base", 1), ("m", 1), ("base", 64), ("m", 64)]
    assert order[4:] == [("m", 1), ("base", 64), ("m", 64), ("base", 1)]


def test_compare_batches_rejects_bad_sizes_and_per_image_divides_by_the_batch():
    with pytest.raises(ValueError, match="batch sizes"):
        compare_latency_batches(lambda n, b: (lambda: None), ["a"], [1, 1])
    with pytest.raises(ValueError, match="batch sizes"):
        compare_latency_batches(lambda n, b: (lambda: None), ["a"], [0])
    t = {"base": {1: LatencyResult(3.0, 3.0, 3.0, 1), 8: LatencyResult(16.0, 16.0, 16.0, 1)},
         "m": {1: LatencyResult(2.0, 2.0, 2.0, 1), 8: LatencyResult(4.0, 4.0, 4.0, 1)}}
    out = per_image_by_batch(t, "m", "base")
    assert out == {"1": {"ms_per_image": 2.0, "reference_ms_per_image": 3.0, "speedup": 1.5},
                   "8": {"ms_per_image": 0.5, "reference_ms_per_image": 2.0, "speedup": 4.0}}
    assert per_image_by_batch(t, "base", "base")["8"]["speedup"] == 1.0
