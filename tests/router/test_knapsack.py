"""The agent's learned values and the exact knapsack decode (issue 13 item 4): the decode is the
agent's, within the budget, near the optimum, and the repair is bounded and reported."""

from __future__ import annotations

import pytest
import torch

from router import RouterSettings, ValueRecorder, bounded_repair, fit_values, knapsack_decode, train_router
from router.synthetic import SyntheticMixture
from search_spaces.errors import UserError


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("seed", [0, 3])
def test_knapsack_on_exact_values_is_the_optimum(seed):
    bench = SyntheticMixture.default(seed=seed, num_experts=3, num_blocks=4, num_skips=1)
    for b in (0.3, 0.55, 0.8):
        arch = knapsack_decode(bench.space, bench.value_table(), b * bench.base_macs)
        assert bench.space.macs(arch) <= b * bench.base_macs
        assert bench.loss(arch) == pytest.approx(bench.optimum(b).loss, rel=1e-9)


def test_fit_values_recovers_an_additive_loss_from_samples():
    bench = SyntheticMixture.default(seed=1, num_experts=2, num_blocks=3, num_skips=1)
    names = bench.space.free_names()
    nc = [len(bench.space.dimension(n).choices) for n in names]
    g = torch.Generator().manual_seed(0)
    rec = ValueRecorder()
    for _ in range(40):
        idx = torch.stack([torch.randint(0, max(nc), (8,), generator=g) % c for c in nc], dim=1)  # (8, T)
        w = torch.nn.functional.one_hot(idx, max(nc)).double()  # (8, T, C)
        rec.add(w, bench.batched_task_loss(w))
    fitted, exact = fit_values(rec, nc), bench.value_table()
    for t, c in enumerate(nc):
        diff = (fitted[t, :c] - fitted[t, 0]) - (exact[t, :c] - exact[t, 0])
        assert diff.abs().max() < 1e-4


def test_bounded_repair_spends_at_most_its_evaluations_and_never_worsens():
    bench = SyntheticMixture.default(seed=2)
    exact = bench.value_table()
    finite = torch.isfinite(exact)
    noisy = exact + 0.2 * torch.randn(exact.shape, generator=torch.Generator().manual_seed(0),
                                      dtype=exact.dtype) * exact[finite].abs().mean()
    cap = 0.5 * bench.base_macs
    start = knapsack_decode(bench.space, noisy, cap)
    calls = []
    arch, rec = bounded_repair(bench.space, start, cap, lambda a: calls.append(a) or bench.loss(a), noisy, 12)
    assert rec.evaluations == len(calls) <= 12
    assert bench.space.macs(arch) <= cap and bench.loss(arch) <= bench.loss(start)
    assert bounded_repair(bench.space, start, cap, bench.loss, noisy, 0) == (start, type(rec)(0, 0))


def test_default_router_decode_is_near_optimal_and_its_repair_bounded():
    bench = SyntheticMixture.default(seed=0)
    res = train_router(bench.space, bench.task_loss, (0.3, 0.7), batched_task_loss=bench.batched_task_loss,
                       steps=300, seed=0, budget_conditioned=True)
    assert res.settings["decode"] == "knapsack"
    for o in res.outcomes:
        opt = bench.optimum(o.budget_ratio).loss
        assert o.decoded_ratio <= o.budget_ratio and o.achieved_ratio <= o.budget_ratio
        assert o.decoded_task_loss / opt - 1 <= 0.01, "the agent's decode alone is within 1% of the optimum"
        assert o.task_loss <= o.decoded_task_loss and o.evaluations <= 32


def test_argmax_decode_with_the_old_fill_is_still_available():
    bench = SyntheticMixture.default(seed=0, num_experts=2, num_blocks=3, num_skips=1)
    res = train_router(bench.space, bench.task_loss, [0.5], steps=30, seed=0, decode="argmax")
    o = res.outcome(0.5)
    assert o.macs <= 0.5 * bench.base_macs and res.settings["decode"] == "argmax"
    with pytest.raises(UserError, match="decode must be"):
        RouterSettings(decode="greedy")
    with pytest.raises(UserError, match="max_repair_evaluations"):
        RouterSettings(max_repair_evaluations=-1)
