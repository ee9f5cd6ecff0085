"""A verdict names a mixture that is the base model on every interval as such."""

from __future__ import annotations

from benchmarks.report.verdict import budget_verdicts


def _row(method, fid, base_intervals=None):
    r = {"method": method, "budget_ratio": 0.3, "fid_mean": fid, "fid_ci_low": fid - 0.01,
         "fid_ci_high": fid + 0.01, "macs_ratio": 0.3, "steps_per_interval": [1, 2, 3], "num_steps": 6}
    if base_intervals is not None:
        r["base_intervals"] = base_intervals
    return r


def _text(rows):
    [v] = budget_verdicts({"rows": rows}, "runs/x", lambda r: True)
    return v["text"]


def test_all_base_mixture_is_named_and_a_partial_one_is_not():
    baseline = _row("fewer_steps", 0.5)
    assert "served by the base model itself" in _text([_row("search", 0.2, [0, 1, 2]), baseline])
    assert "served by the base model itself" not in _text([_row("search", 0.2, [0, 2]), baseline])
    assert "served by the base model itself" not in _text([_row("search", 0.2), baseline])
