"""The synthetic benchmark: its DP optimum is the true optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from router.agent import one_hot_weights
from router.synthetic import SyntheticMixture


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget", [0.35, 0.5, 0.8])
def test_knapsack_optimum_equals_brute_force_on_a_tiny_instance(seed, budget):
    bench = SyntheticMixture.default(seed=seed, num_experts=2, num_blocks=2, num_skips=1, widths=(8, 16, 24, 32))
    assert bench.space.cardinality() == (4 * 4 * 2) ** 2
    dp, bf = bench.optimum(budget), bench.brute_force(budget)
    assert dp.loss == pytest.approx(bf.loss, abs=1e-12)
    assert dp.macs <= budget * bench.base_macs + 1e-6  # same tolerance as Allocation.feasible
    assert bench.loss(dp.arch) == pytest.approx(dp.loss)


def test_relaxed_task_loss_is_exact_on_one_hots_and_batched_agrees():
    bench = SyntheticMixture.default(seed=3)
    rng = np.random.default_rng(1)
    archs = [bench.space.sample(rng) for _ in range(5)]
    ws = [one_hot_weights(bench.space, a) for a in archs]
    for a, w in zip(archs, ws):
        assert float(bench.task_loss(w)) == pytest.approx(bench.loss(a), rel=1e-6)
    c = max(len(d.choices) for d in bench.space.free_dimensions())
    padded = torch.zeros(len(archs), len(bench.space.free_names()), c)
    for b, w in enumerate(ws):
        for t, name in enumerate(bench.space.free_names()):
            padded[b, t, : len(w[name])] = w[name]
    assert bench.batched_task_loss(padded).numpy() == pytest.approx([bench.loss(a) for a in archs], rel=1e-6)


def test_experts_differ_and_the_optimum_is_not_uniform():
    bench = SyntheticMixture.default(seed=0)
    opt = bench.optimum(0.5)
    per = bench.space.split(opt.arch)
    ratios = [bench.space.parts[p].macs(a) / bench.space.parts[p].macs(bench.space.parts[p].full())
              for p, a in per.items()]
    assert max(ratios) - min(ratios) > 0.2
    assert opt.loss < bench.loss(bench.space.smallest())


def test_budget_below_smallest_is_refused():
    bench = SyntheticMixture.default(seed=0)
    with pytest.raises(ValueError, match="smallest"):
        bench.optimum(0.05)
