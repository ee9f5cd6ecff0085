"""nas.latency: structure of the measurements (tests never assert on timings)."""

from __future__ import annotations

import pytest

from nas.latency import LatencyResult, compare_latency, measure_latency_ms


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
