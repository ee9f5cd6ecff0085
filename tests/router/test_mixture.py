"""The router's task loss on a real (tiny) mixture of elastic experts."""

from __future__ import annotations

import pytest
import torch

from experts.intervals import Intervals
from experts.denoising import expert_loss, make_batch, training_scheduler
from experts.losses import make_heldout
from router.agent import one_hot_weights
from experts import MixtureSpace
from router.mixture import MixtureRoutingLoss
from router.output import write_outputs
from router.train import train_router
from search_spaces.elastic_unet import ElasticUNet
from tests.conftest import build_tiny_unet


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    base = build_tiny_unet()
    iv = Intervals(100, (50,))
    experts = [ElasticUNet(base) for _ in range(iv.num_intervals)]
    g = torch.Generator().manual_seed(0)
    images = torch.randn(24, 1, 16, 16, generator=g).clamp(-1, 1)
    heldout = make_heldout(images[:8], iv, n_per_interval=8, seed=0)
    sched = training_scheduler({"num_train_timesteps": 100})
    return base, iv, experts, images[8:], heldout, sched


def _loss(parts, **kw):
    base, iv, experts, images, heldout, sched = parts
    return MixtureRoutingLoss(experts, iv, (6, 4), base, sched, images, heldout, batch_size=4, seed=3, **kw)


def test_relaxed_loss_at_one_hots_equals_the_discrete_experts_on_the_same_batches(parts):
    base, iv, experts, images, heldout, sched = parts
    loss = _loss(parts)
    arch = loss.space.sample(__import__("numpy").random.default_rng(1))
    relaxed = float(loss(one_hot_weights(loss.space, arch)))
    g = torch.Generator().manual_seed(3)
    expected = 0.0
    sub = loss.mixture.split(arch)
    for k, e in enumerate(experts):
        e.set_active(sub[k])
        batch = make_batch(images, iv, k, 4, g)
        with torch.no_grad():
            t = expert_loss(e, base, batch, sched, distill_weight=1.0).total
        expected += (6, 4)[k] / 10 * float(t)
    loss.reset()
    assert relaxed == pytest.approx(expected, rel=1e-4)


def test_gradient_reaches_every_experts_weights_and_experts_stay_frozen(parts):
    loss = _loss(parts)
    w = {n: torch.full((len(loss.space.dimension(n).choices),), 1.0 / len(loss.space.dimension(n).choices),
                       requires_grad=True) for n in loss.space.free_names()}
    loss(w).backward()
    for k in range(2):
        grads = [w[n].grad for n in w if n.startswith(MixtureSpace.part_name(k) + "/") and w[n].grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for e in parts[2] for p in e.parameters())
    loss.reset()


def test_discrete_loss_is_cached_per_expert_and_full_arch_has_no_distillation_gap(parts):
    base, iv, experts, images, heldout, sched = parts
    loss = _loss(parts)
    full = loss.space.full()
    a = loss.arch_loss(full)
    assert loss.evaluations == 2
    assert loss.arch_loss(full) == a and loss.evaluations == 2
    small0 = loss.space.join({"e0": experts[0].space.smallest(), "e1": experts[1].space.full()})
    loss.arch_loss(small0)
    assert loss.evaluations == 3  # only expert 0 changed
    sens = loss.sensitivity()
    assert len(sens) == 2 and all(s > 0 for s in sens)
    # at the full arch the experts equal the teacher: the distillation term is zero
    no_distill = MixtureRoutingLoss(experts, iv, (6, 4), None, sched, images, heldout)
    assert a == pytest.approx(no_distill.arch_loss(full), rel=1e-5)


def test_route_a_tiny_mixture_end_to_end(parts, tmp_path):
    base, iv, experts, images, heldout, sched = parts
    loss = _loss(parts)
    budgets = [0.4, 0.7]
    res = train_router(loss.space, loss, budgets, arch_loss_fn=loss.arch_loss, steps=6, budgets_per_step=1,
                       budget_conditioned=True, log_every=2)
    loss.reset()
    full = loss.space.macs(loss.space.full())
    for b in budgets:
        assert res.outcome(b).macs <= b * full
    paths = write_outputs(res, loss.mixture, tmp_path / "router", sensitivity=loss.sensitivity())
    assert [p.name for p in paths] == ["router-0.4.json", "router-0.7.json"]
    assert loss.relaxed_calls >= 6


def test_joint_training_updates_the_experts_and_refreshes_cached_losses(parts):
    import copy

    base, iv, experts, images, heldout, sched = parts
    own = [copy.deepcopy(e) for e in experts]
    for e in own:
        for p in e.parameters():
            p.requires_grad_(True)
    loss = MixtureRoutingLoss(own, iv, (6, 4), base, sched, images, heldout, batch_size=4, seed=3, joint=True)
    before = [p.detach().clone() for p in own[0].parameters()]
    full_before = loss.arch_loss(loss.space.full())
    res = train_router(loss.space, loss, [0.6], arch_loss_fn=loss.arch_loss, steps=3, budgets_per_step=1,
                       joint_parameters=loss.parameters(), joint_lr=1e-3, fill=False, exchange=False)
    loss.reset()
    assert res.settings["joint"] is True
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, own[0].parameters()))
    assert loss.arch_loss(loss.space.full()) != full_before  # not answered from the stale cache
