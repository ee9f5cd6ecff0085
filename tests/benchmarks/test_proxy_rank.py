"""benchmarks.proxy_rank: the step-count ranges, the budget fitting, Kendall tau, and a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import proxy_rank
from experts.intervals import Intervals
from experts.steps_space import joint_space, split_joint
from search_spaces import Dimension, SimpleSpace

IV = Intervals(1000, (500,))


def test_step_counts_keep_one_step_in_the_lowest_interval():
    assert proxy_rank._step_counts(IV, (2, 3), 2.0) == [(1, 2, 3, 4), (0, 1, 2, 3, 4, 5, 6)]
    assert proxy_rank._step_counts(Intervals(10, (3,)), (2, 2), 4.0) == [(1, 2, 3), (0, 1, 2, 3, 4, 5, 6, 7)]


def test_shrink_takes_steps_away_until_the_budget_fits():
    expert = SimpleSpace([Dimension("w", (4, 8))], macs_fn=lambda a: 10 * a["w"])
    space = joint_space(IV, [expert, expert], [(1, 2, 3, 4), (0, 1, 2, 3, 4)])

    def ratio(arch):  # against 4 full steps
        schedule, archs = split_joint(space, arch, IV)
        return sum(s * a["w"] / 8 for s, a in zip(schedule.steps_per_interval, archs)) / 4

    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = proxy_rank._shrink_to(space, space.sample(rng), ratio, 0.5, rng)
        assert ratio(arch) <= 0.5 and arch["e0/steps/count"] >= 1


def test_kendall_tau_of_a_perfect_and_a_reversed_proxy():
    recs = [{"fid": f, "trajectory": f / 10, "small_fid": -f, "heldout": 1.0 + (f % 2)} for f in (1.0, 2.0, 3.0, 4.0)]
    taus = proxy_rank.kendall_taus(recs)
    assert taus["trajectory"]["tau"] == pytest.approx(1.0)
    assert taus["small_fid"]["tau"] == pytest.approx(-1.0)
    assert taus["trajectory"]["n"] == 4


@pytest.mark.slow
def test_proxy_rank_on_a_tiny_run(tmp_path):
    from nas.cli import main

    tiny = Path(__file__).with_name("tiny_pipeline.yaml")
    skip = [a for s in ("router", "search", "finetune", "bench", "report") for a in ("--skip", s)]
    assert main(["run", "--config", str(tiny), "--set", f"run_root={tmp_path}", *skip]) == 0
    out = tmp_path / "rank.json"
    result = proxy_rank.main([str(tmp_path / "tinypipe"), "--num-allocations", "4", "--budgets", "0.5", "0.9",
                              "--proxy-images", "4", "--reference-steps", "6", "--fid-images", "8", "--out", str(out)])
    stored = json.loads(out.read_text())
    assert stored["kendall_tau"] == result["kendall_tau"]
    allocs = stored["allocations"]
    assert len(allocs) >= 5 and any(a["label"].startswith("fewer_steps") for a in allocs)
    for a in allocs:
        assert a["macs_ratio"] <= a["budget"] + 1e-9 and a["steps_per_interval"][0] >= 0
        assert np.isfinite([a["trajectory"], a["small_fid"], a["heldout"], a["fid"]]).all()
    assert set(stored["kendall_tau"]) == {"trajectory", "small_fid", "heldout"}
