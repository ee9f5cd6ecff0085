"""Resource loss, relaxed trajectory MACs, batched objective and the lagrangian multiplier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from router.agent import ExpertRoutingAgent, gumbel_softmax_st, one_hot_weights
from router.objective import RouterObjective, choice_macs_deltas, relaxed_macs, resource_loss
from router.synthetic import SyntheticMixture
from search_spaces import Dimension, ProductSpace, SimpleSpace


@pytest.mark.parametrize("r,p", [(0.25, 0.5), (0.5, 0.25), (0.7, 0.7), (0.31, 0.3)])
def test_resource_loss_is_log_of_max_over_min(r, p):
    got = float(resource_loss(torch.tensor(r, dtype=torch.float64), p))
    assert got == pytest.approx(math.log(max(r, p) / min(r, p)), abs=1e-12)


def test_relaxed_trajectory_macs_equal_exact_macs_on_one_hots():
    bench = SyntheticMixture.default(seed=1, num_experts=3, num_blocks=3, num_skips=1)
    rng = np.random.default_rng(0)
    for _ in range(10):
        arch = bench.space.sample(rng)
        w = one_hot_weights(bench.space, arch)
        assert float(relaxed_macs(bench.space, w)) == pytest.approx(bench.space.macs(arch))


class _Interacting(SimpleSpace):
    """A part whose MACs are not additive and that overrides macs_relaxed with an exact model."""

    def macs_relaxed(self, weights):
        w, keep = weights["w"], weights["keep"]
        widths = torch.tensor([float(c) for c in self.dimension("w").choices], dtype=torch.float64)
        return 10.0 + (w.double() * widths).sum() * keep.double()[1]


def test_product_space_uses_each_parts_own_relaxed_model():
    dims = [Dimension("w", (2, 4)), Dimension("keep", (False, True), "depth")]
    part = _Interacting(dims, macs_fn=lambda a: 10 + (a["w"] if a["keep"] else 0))
    mix = ProductSpace({"a": part, "b": part}, weights={"a": 3, "b": 1})
    w = {"a/w": torch.tensor([0.5, 0.5]), "a/keep": torch.tensor([0.5, 0.5]),
         "b/w": torch.tensor([0.0, 1.0]), "b/keep": torch.tensor([0.0, 1.0])}
    # exact relaxed model: a: 10 + 3*0.5 = 11.5 (x3), b: 14 (x1)
    assert float(relaxed_macs(mix, w)) == pytest.approx(3 * 11.5 + 14)
    assert set(mix.split_values(w)) == {"a", "b"}


def test_batched_objective_matches_per_sample_values_and_gradients():
    bench = SyntheticMixture.default(seed=0, num_experts=3, num_blocks=3, num_skips=1)
    obj_fast = RouterObjective(bench.space, bench.task_loss, batched_task_loss=bench.batched_task_loss,
                               mode="log_ratio", resource_weight=3.0)
    obj_slow = RouterObjective(bench.space, bench.task_loss, mode="log_ratio", resource_weight=3.0)
    obj_slow._deltas = None  # force the per-sample path
    agent = ExpertRoutingAgent(bench.space, seed=0)
    budgets = [0.3, 0.5, 0.8, 0.5]
    grads = []
    for obj in (obj_fast, obj_slow):
        agent.zero_grad()
        w = gumbel_softmax_st(agent(budgets), 1.5, torch.Generator().manual_seed(4))
        terms = obj.batch(w, budgets)
        terms.loss.sum().backward()
        grads.append(agent.token_bias.grad.clone())
        exact = [bench.space.macs(bench.space.complete(
            {d.name: d.choices[int(w[b, t].argmax())] for t, d in enumerate(bench.space.free_dimensions())}))
            / bench.base_macs for b in range(len(budgets))]
        assert terms.ratio.detach().numpy() == pytest.approx(exact)
        assert terms.resource.detach().numpy() == pytest.approx(
            [abs(math.log(r / p)) for r, p in zip(exact, budgets)], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_choice_macs_deltas_are_relative_to_full():
    space = SimpleSpace([Dimension("a", (1, 2, 3)), Dimension("b", (False, True), "depth")],
                        macs_fn=lambda x: 10 * x["a"] + (7 if x["b"] else 0))
    d = choice_macs_deltas(space)
    assert d.tolist() == [[-20.0, -10.0, 0.0], [-7.0, 0.0, 0.0]]


def test_lagrangian_multiplier_rises_when_over_budget_and_falls_when_under():
    bench = SyntheticMixture.default(seed=0, num_experts=2, num_blocks=2, num_skips=1)
    obj = RouterObjective(bench.space, bench.task_loss, mode="lagrangian", resource_weight=2.0,
                          budget_range=(0.3, 0.9), num_knots=4, multiplier_init=1.0, dual_lr=0.5)
    obj.update_dual([0.8], [0.2])  # over budget at 0.8
    assert obj.multiplier(0.8) > 1.0
    assert obj.multiplier(0.3) == pytest.approx(1.0)  # far knots untouched
    obj.update_dual([0.3], [-0.4])
    assert obj.multiplier(0.3) < 1.0
    plain = RouterObjective(bench.space, bench.task_loss, mode="log_ratio")
    plain.update_dual([0.5], [1.0])
    assert plain.multiplier(0.5) == 0.0


def test_bad_arguments_are_refused():
    bench = SyntheticMixture.default(seed=0, num_experts=2, num_blocks=2, num_skips=1)
    with pytest.raises(ValueError, match="resource mode"):
        RouterObjective(bench.space, bench.task_loss, mode="quadratic")
    with pytest.raises(ValueError, match="resource_weight"):
        RouterObjective(bench.space, bench.task_loss, resource_weight=-1.0)
    obj = RouterObjective(bench.space, lambda w: torch.zeros(2))
    with pytest.raises(ValueError, match="scalar"):
        obj({n: torch.ones(len(bench.space.dimension(n).choices)) for n in bench.space.free_names()}, 0.5)
