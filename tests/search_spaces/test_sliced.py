"""The sliced evaluation path of the supernet: opt-in, shares the live weights, never stale.

(Sliced == masked on the three UNet configurations is a case of the shipped contract suite,
run in test_elastic_unet.py.)
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from search_spaces import ElasticUNet
from tests.conftest import unet_inputs

ATOL = 1e-5


def _outputs(net: ElasticUNet, arch, kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked, sliced) outputs of ``arch``."""
    net.set_active(arch)
    with torch.no_grad():
        masked = net(**kw).sample
    net.set_active(arch, mode="sliced")
    with torch.no_grad():
        sliced = net(**kw).sample
    return masked, sliced


def _narrow(net: ElasticUNet):
    """An arch with every width-like dimension at its narrowest non-zero choice, layers kept."""
    choices = {d.name: min(c for c in d.choices if c) for d in net.space.free_dimensions()
               if d.kind in ("width", "heads", "ffn")}
    return net.space.complete(choices)


def test_default_mode_is_masked_and_runs_the_wrapped_unet(tiny_attn_unet):
    net = ElasticUNet(tiny_attn_unet)
    kw = unet_inputs(net.unet)
    arch = net.space.sample(np.random.default_rng(0))
    net.set_active(arch)
    assert net.mode == "masked" and net._sliced_active is None
    with torch.no_grad():
        assert torch.equal(net(**kw).sample, net.unet(**kw).sample)
    with pytest.raises(ValueError, match="mode must be one of"):
        net.set_active(arch, mode="pruned")


def test_sliced_sub_network_shares_the_supernet_parameters(tiny_cond_unet):
    net = ElasticUNet(tiny_cond_unet)
    sub = net.sliced(_narrow(net))
    own = {id(p) for p in net.unet.parameters()}
    assert {id(p) for p in sub.parameters()} <= own, "a sliced sub-network copies no weight"
    # the supernet's own modules keep their masking hooks; the sub-network's modules have none
    assert any(m._forward_pre_hooks for m in net.unet.modules())
    assert not any(m._forward_pre_hooks for m in sub.modules())


def test_sliced_sees_training_steps_and_loaded_weights(tiny_attn_unet):
    net = ElasticUNet(tiny_attn_unet)
    kw = unet_inputs(net.unet)
    arch = _narrow(net)
    before = _outputs(net, arch, kw)[1]
    # a masked training step on another arch changes the shared weights in place
    net.set_active(net.space.full())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(**kw).sample.pow(2).mean().backward()
    opt.step()
    masked, sliced = _outputs(net, arch, kw)
    assert not torch.allclose(sliced, before)
    torch.testing.assert_close(sliced, masked, rtol=ATOL, atol=ATOL)
    # a fused optimizer step does not bump tensors' version counters: nothing relies on them
    net.set_active(arch, mode="sliced")
    opt = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
    net(**kw).sample.pow(2).mean().backward()
    opt.step()
    masked, sliced = _outputs(net, arch, kw)
    torch.testing.assert_close(sliced, masked, rtol=ATOL, atol=ATOL)
    # load_state_dict copies into the same tensors
    state = {k: torch.randn_like(v) * 0.05 for k, v in net.unet.state_dict().items()}
    net.unet.load_state_dict(state)
    masked, sliced = _outputs(net, arch, kw)
    torch.testing.assert_close(sliced, masked, rtol=ATOL, atol=ATOL)


def test_sliced_follows_dtype_moves_and_train_mode(tiny_unet):
    net = ElasticUNet(tiny_unet)
    arch = _narrow(net)
    net.set_active(arch, mode="sliced")
    net.to(torch.float64)
    kw = {k: v.double() if v.is_floating_point() else v for k, v in unet_inputs(net.unet).items()}
    masked, sliced = _outputs(net, arch, kw)
    assert sliced.dtype == torch.float64
    torch.testing.assert_close(sliced, masked, rtol=1e-10, atol=1e-10)
    net.eval()
    with torch.no_grad():
        net(**kw)
    assert not any(m.training for m in net.sliced(arch).modules())
    net.train()
    assert all(m.training for m in net.sliced(arch).modules())


def test_sliced_weight_gradients_equal_masked_ones(tiny_attn_unet):
    """Weight training through the sliced path (Once-for-All style) gives the masked path's
    gradients: zero on the inactive channels, the same on the active ones."""
    net = ElasticUNet(tiny_attn_unet)
    kw = unet_inputs(net.unet)
    arch = _narrow(net)
    grads = []
    for mode in ("masked", "sliced"):
        net.zero_grad(set_to_none=True)
        net.set_active(arch, mode=mode)
        net(**kw).sample.pow(2).mean().backward()
        grads.append({n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                      for n, p in net.unet.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_relaxed_and_reset_leave_sliced_mode(tiny_unet):
    net = ElasticUNet(tiny_unet)
    arch = _narrow(net)
    net.set_active(arch, mode="sliced")
    weights = {d.name: torch.full((len(d.choices),), 1.0 / len(d.choices)) for d in net.space.free_dimensions()}
    net.set_active_relaxed(weights)
    assert net.mode == "relaxed" and net._sliced_active is None
    net.set_active(arch, mode="sliced")
    net.reset()
    assert net.mode == "masked" and net.active == net.space.full()


def test_cache_is_bounded_and_least_recently_used(tiny_unet):
    net = ElasticUNet(tiny_unet)
    net.sliced_cache_size = 2
    rng = np.random.default_rng(3)
    archs = []
    while len(archs) < 3:
        a = net.space.sample(rng)
        if a not in archs:
            archs.append(a)
    first = net.sliced(archs[0])
    net.sliced(archs[1])
    assert net.sliced(archs[0]) is first  # now most recently used
    net.sliced(archs[2])  # drops archs[1]
    assert list(net._sliced_cache) == [archs[0], archs[2]]
    net.set_active(archs[0], mode="sliced")
    net.clear_sliced_cache()
    assert net.mode == "masked" and not net._sliced_cache


def test_deepcopy_keeps_the_mode_on_its_own_weights(tiny_unet):
    net = ElasticUNet(tiny_unet)
    kw = unet_inputs(net.unet)
    arch = _narrow(net)
    net.set_active(arch, mode="sliced")
    twin = copy.deepcopy(net)
    assert twin.mode == "sliced" and twin.active == arch
    with torch.no_grad():
        for p in twin.unet.parameters():
            p.add_(0.01)
        assert not torch.equal(twin(**kw).sample, net(**kw).sample)
    masked, sliced = _outputs(twin, arch, kw)
    torch.testing.assert_close(sliced, masked, rtol=ATOL, atol=ATOL)


def test_scale_shift_time_embedding_is_sliced_in_halves():
    """``resnet_time_scale_shift="scale_shift"``: the time projection emits (scale, shift)
    halves; the sliced path keeps the first channels of each, as materialisation does."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, add_attention=False,
                       resnet_time_scale_shift="scale_shift",
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    net = ElasticUNet(unet)
    kw = unet_inputs(net.unet)
    for arch in (_narrow(net), net.space.sample(np.random.default_rng(1))):
        masked, sliced = _outputs(net, arch, kw)
        torch.testing.assert_close(sliced, masked, rtol=ATOL, atol=ATOL)
        with torch.no_grad():
            torch.testing.assert_close(net.materialize(arch)(**kw).sample, sliced, rtol=1e-4, atol=1e-4)
