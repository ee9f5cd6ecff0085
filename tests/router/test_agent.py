"""The routing agent: tokens, masks, sampling, decoding, conditioning, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from router.agent import ExpertRoutingAgent, gumbel_softmax_st, one_hot_weights, token_layout
from router.synthetic import SyntheticMixture
from search_spaces import Dimension, ProductSpace, SimpleSpace


def _tied_space() -> SimpleSpace:
    dims = [
        Dimension("down.0.width", (4, 8, 12, 16)),
        Dimension("down.0.depth", (False, True), "depth"),
        Dimension("up.0.depth", (False, True), "depth", tied_to="down.0.depth", rule="skip pairing"),
        Dimension("mid.heads", (1, 2), "heads"),
    ]
    return SimpleSpace(dims, macs_fn=lambda a: a["down.0.width"] * (3 if a["down.0.depth"] else 1) + 5 * a["mid.heads"])


def test_tokens_cover_free_dimensions_only_and_experts_in_order():
    part = _tied_space()
    mix = ProductSpace({"e0": part, "e1": part, "e2": part}, weights={"e0": 2, "e1": 3, "e2": 5})
    layout = token_layout(mix)
    assert [t[3].name for t in layout] == list(mix.free_names())
    assert "e0/up.0.depth" not in [t[3].name for t in layout]
    assert [t[0] for t in layout] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [t[1] for t in layout] == [0, 1, 2] * 3


def test_logits_mask_padded_choices_and_samples_are_valid_one_hots():
    mix = ProductSpace({"e0": _tied_space(), "e1": _tied_space()})
    agent = ExpertRoutingAgent(mix, seed=0)
    logits = agent([0.5, 0.7])  # (B, T, C)
    assert tuple(logits.shape) == (2, 6, 4)
    assert bool((logits[:, 1, 2:] < -1e8).all())  # depth has 2 choices
    g = torch.Generator().manual_seed(0)
    for w in agent.sample_weights([0.5] * 8, tau=1.0, generator=g):
        for d in mix.free_dimensions():
            v = w[d.name]
            assert tuple(v.shape) == (len(d.choices),)
            assert float(v.detach().sum()) == pytest.approx(1.0)
            assert sorted(v.tolist()).count(1.0) == 1


def test_decode_completes_tied_dimensions_and_validates():
    mix = ProductSpace({"e0": _tied_space(), "e1": _tied_space()})
    agent = ExpertRoutingAgent(mix, seed=3)
    with torch.no_grad():
        agent.token_bias.zero_()
        agent.token_bias[1, 0] = 50.0  # e0/down.0.depth -> False (skip)
    arch = agent.decode(0.5)
    mix.validate(arch)
    assert arch["e0/down.0.depth"] is False and arch["e0/up.0.depth"] is False


def test_seeded_init_and_sampling_are_reproducible_and_leave_global_rng_alone():
    space = SyntheticMixture.default(seed=0, num_experts=2, num_blocks=2, num_skips=1).space
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = ExpertRoutingAgent(space, seed=7, budget_conditioned=True)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = ExpertRoutingAgent(space, seed=7, budget_conditioned=True)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    wa = gumbel_softmax_st(a([0.4]), 1.0, torch.Generator().manual_seed(1))
    wb = gumbel_softmax_st(b([0.4]), 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(wa, wb)


def test_budget_input_changes_logits_only_when_conditioned():
    space = SyntheticMixture.default(seed=0, num_experts=2, num_blocks=2, num_skips=1).space
    cond = ExpertRoutingAgent(space, seed=0, budget_conditioned=True)
    assert not torch.allclose(cond([0.3]), cond([0.8]))
    prices = cond.log_price(torch.tensor([0.1, 0.3, 0.5, 0.8, 1.0])).tolist()
    assert all(a > b for a, b in zip(prices, prices[1:]))  # price of compute falls as budget grows
    plain = ExpertRoutingAgent(space, seed=0, budget_conditioned=False)
    assert torch.equal(plain([0.3]), plain([0.8]))


def test_straight_through_gradient_reaches_every_table_entry_of_a_dimension():
    space = SyntheticMixture.default(seed=0, num_experts=2, num_blocks=2, num_skips=1).space
    agent = ExpertRoutingAgent(space, seed=0)
    w = agent.sample_weights([0.5], tau=2.0, generator=torch.Generator().manual_seed(0))[0]
    target = torch.arange(len(w["e0/b0.width"]), dtype=torch.float32)
    (w["e0/b0.width"] * target).sum().backward()
    g = agent.token_bias.grad[0, : len(target)]
    assert bool((g != 0).all())
    assert float(agent.token_bias.grad[1:].abs().sum()) == 0.0


def test_one_hot_weights_match_arch():
    space = _tied_space()
    arch = space.complete({"down.0.width": 12, "down.0.depth": False, "mid.heads": 2})
    w = one_hot_weights(space, arch)
    assert set(w) == set(space.free_names())
    assert w["down.0.width"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert w["down.0.depth"].tolist() == [1.0, 0.0]


def test_space_without_free_dimensions_is_refused():
    single = SimpleSpace([Dimension("w", (8,))], macs_fn=lambda a: 1)
    assert ExpertRoutingAgent(single).decode() == single.full()  # one choice is still a token
    with pytest.raises(ValueError, match="no free dimensions"):
        ExpertRoutingAgent(SimpleSpace([], macs_fn=lambda a: 1))


def test_noise_scale_zero_gives_the_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    w = gumbel_softmax_st(logits, 1.0, torch.Generator().manual_seed(0), noise_scale=0.0)
    assert np.argmax(w.detach().numpy(), axis=1).tolist() == [1, 0]
