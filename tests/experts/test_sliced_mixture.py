"""Sliced evaluation wired into the mixture and the held-out loss: a mixture evaluated without
gradients (or in eval mode) runs each supernet expert's sliced sub-network, at the arch's
MACs and equal to the masked pass; training keeps the masks.

(Sliced == masked for a single supernet on the three UNet configurations is the contract
suite's ``test_sliced_equals_masked``, run in tests/search_spaces/test_elastic_unet.py.)
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from torch.utils.flop_counter import FlopCounterMode

from experts.intervals import Intervals
from experts.losses import make_heldout, proxy_loss
from experts.mixture import MixtureOfExperts
from search_spaces import ElasticUNet
from tests.conftest import build_tiny_attn_unet, build_tiny_cond_unet, build_tiny_unet, unet_inputs

ATOL = 1e-5
IV3 = Intervals(1000, (300, 700))
BUILDERS = {"plain": build_tiny_unet, "attention": build_tiny_attn_unet, "conditional": build_tiny_cond_unet}


def _narrow(net: ElasticUNet):
    """Every width-like dimension at its narrowest non-zero choice, layers kept."""
    return net.space.complete({d.name: min(c for c in d.choices if c) for d in net.space.free_dimensions()
                               if d.kind in ("width", "heads", "ffn")})


def _archs(net: ElasticUNet) -> list:
    return [_narrow(net), net.space.smallest(), net.space.uniform(0.5)]


def _count_supernet_calls(net: ElasticUNet) -> list[int]:
    """A counter of calls of the supernet's own UNet modules (the sliced sub-network is a
    clone without hooks: it never fires these)."""
    calls = [0]
    net.unet.conv_in.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


@pytest.mark.parametrize("config", list(BUILDERS))
def test_no_grad_mixture_runs_sliced_and_equals_masked(config):
    net = ElasticUNet(BUILDERS[config]())
    archs = _archs(net)
    kw = unet_inputs(net.unet, batch_size=6)
    kw["timestep"] = torch.tensor([10, 200, 350, 500, 800, 990])  # every interval, mixed in one batch
    moe = MixtureOfExperts(IV3, [net] * 3, archs)
    masked_moe = MixtureOfExperts(IV3, [net] * 3, archs)
    masked_moe.sliced_eval = False
    calls = _count_supernet_calls(net)
    before = net.active
    with torch.no_grad():
        assert moe.sliced_now() and not masked_moe.sliced_now()
        sliced = moe(**kw).sample
        assert calls[0] == 0, "the sliced path never calls the supernet's own (masked) modules"
        assert net.active == before and net.mode == "masked", "the supernet's own state is left alone"
        masked = masked_moe(**kw).sample
        assert calls[0] == 3, "sliced_eval=False switches the masks, one supernet call per interval"
    torch.testing.assert_close(sliced, masked, rtol=ATOL, atol=ATOL)
    # eval mode alone (gradients on) also evaluates sliced; the input gradient is the masked
    # one's (one interval per batch: the masked path cannot backpropagate through a batch that
    # switches one shared supernet's masks in place between intervals)
    moe.eval()
    one = {**kw, "timestep": torch.tensor(400), "sample": kw["sample"].clone().requires_grad_(True)}
    out = moe(**one).sample
    assert calls[0] == 3
    (g_sliced,) = torch.autograd.grad(out.pow(2).sum(), one["sample"])
    masked_moe.eval()
    out = masked_moe(**one).sample
    (g_masked,) = torch.autograd.grad(out.pow(2).sum(), one["sample"])
    torch.testing.assert_close(g_sliced, g_masked, rtol=1e-4, atol=1e-5)


def test_no_grad_mixture_costs_the_arch_macs():
    """FLOPs counted by torch (deterministic, not timed): a no-grad mixture call of a narrow arch
    costs exactly the arch's analytic MACs (twice, as FLOPs), far below the masked pass."""
    net = ElasticUNet(build_tiny_unet())
    arch = _narrow(net)
    kw = unet_inputs(net.unet, batch_size=4)
    kw["timestep"] = torch.tensor(100)  # the whole batch in interval 0
    moe = MixtureOfExperts(IV3, [net] * 3, [arch, net.space.full(), net.space.full()])
    with torch.no_grad():
        sliced = _flops(lambda: moe(**kw))
        moe.sliced_eval = False
        masked = _flops(lambda: moe(**kw))
    assert sliced == 2 * 4 * net.space.macs(arch)
    assert net.space.macs(arch) < 0.5 * net.space.total_macs
    assert sliced < 0.6 * masked


def test_training_keeps_the_masks_and_their_gradients():
    base = build_tiny_unet()
    nets = [ElasticUNet(base) for _ in range(3)]
    archs = _archs(nets[0])
    kw = unet_inputs(base, batch_size=3)
    kw["timestep"] = torch.tensor([10, 500, 900])
    moe = MixtureOfExperts(IV3, nets, archs).train()
    counters = [_count_supernet_calls(n) for n in nets]
    assert not moe.sliced_now()
    moe(**kw).sample.pow(2).mean().backward()
    assert [c[0] for c in counters] == [1, 1, 1]
    assert all(n.mode == "masked" and n.active == a for n, a in zip(nets, archs))
    grads = {n: p.grad.clone() for n, p in moe.named_parameters() if p.grad is not None}
    assert grads, "weight gradients flow through the masked experts"
    # a supernet left in sliced mode by someone else is switched back to masks for training
    moe.zero_grad(set_to_none=True)
    nets[1].set_active(archs[1], mode="sliced")
    moe(**kw).sample.pow(2).mean().backward()
    assert nets[1].mode == "masked" and [c[0] for c in counters] == [2, 2, 2]
    for n, g in grads.items():
        assert torch.equal(moe.get_parameter(n).grad, g), n


def test_heldout_loss_runs_sliced_and_restores_the_supernet():
    net = ElasticUNet(build_tiny_unet())
    iv = Intervals(1000, (500,))
    heldout = make_heldout(torch.randn(16, 1, 16, 16), iv, n_per_interval=6, seed=0)
    sched = DDPMScheduler(num_train_timesteps=1000)
    archs = [_narrow(net), net.space.smallest()]
    prev = net.space.uniform(0.5)
    net.set_active(prev)
    net.train()
    calls = _count_supernet_calls(net)
    sliced = proxy_loss(net, archs, heldout, sched)
    assert calls[0] == 0, "the held-out loss evaluates the sliced sub-networks"
    assert net.active == prev and net.mode == "masked" and net.training
    # the masked reference: each arch set by hand, plain masked passes
    want = []
    for k, arch in enumerate(archs):
        net.set_active(arch)
        want.append(proxy_loss(net, None, heldout, sched).per_interval[k])
    assert calls[0] > 0
    assert sliced.per_interval == pytest.approx(want, rel=1e-5, abs=1e-7)
    # a supernet that was in sliced mode goes back to it
    net.set_active(prev, mode="sliced")
    proxy_loss(net, archs, heldout, sched)
    assert net.active == prev and net.mode == "sliced"
