"""DeepCache (experts.caching): interval 1 is the plain UNet bit for bit, a cached step runs only
the shallow branch on the last full step's deep features, and its MACs are counted exactly."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from experts.caching import (
    CacheMacs,
    CacheSettings,
    CachedUNet,
    branch_macs,
    cache_macs,
    choose_cache,
    full_steps,
    num_branches,
)
from nas.sampling import generate, make_scheduler
from search_spaces.macs import count_unet_macs, reference_macs, unet_example_inputs, unet_macs_by_module
from tests.conftest import build_tiny_cond_unet, unet_inputs


def _sample_kwargs(unet, num_steps: int = 5) -> dict:
    cfg = unet.config
    kw = dict(num_images=3, num_steps=num_steps, batch_size=3, seed=0, progress=False,
              sample_shape=(cfg.in_channels, cfg.sample_size, cfg.sample_size))
    if getattr(cfg, "cross_attention_dim", None):
        g = torch.Generator().manual_seed(3)
        kw["encoder_hidden_states"] = torch.randn(1, 5, cfg.cross_attention_dim, generator=g)
    return kw


def _ddim():
    from diffusers import DDPMScheduler

    return make_scheduler("ddim", dict(DDPMScheduler().config))


def _no_instance_forward(unet) -> bool:
    return all("forward" not in m.__dict__ for m in unet.modules())


def test_interval_one_samples_exactly_the_plain_unet(any_unet):
    kw = _sample_kwargs(any_unet)
    plain = generate(any_unet, _ddim(), **kw)
    for branch in (0, num_branches(any_unet) - 1):
        cached = generate(CachedUNet(any_unet, CacheSettings(interval=1, branch=branch)), _ddim(), **kw)
        assert torch.equal(cached, plain)


def test_a_cached_call_on_the_full_calls_input_gives_its_output(any_unet):
    """The replayed deep features are the ones the full call computed and the shallow branch is
    recomputed on the same input: every branch reproduces the full output bit for bit."""
    kw = unet_inputs(any_unet)
    with torch.no_grad():
        full = any_unet(**kw).sample
        for branch in range(num_branches(any_unet)):
            wrapper = CachedUNet(any_unet, CacheSettings(interval=2, branch=branch))
            assert torch.equal(wrapper.full_call(**kw).sample, full)
            assert torch.equal(wrapper.cached_call(**kw).sample, full), branch
            assert _no_instance_forward(any_unet)  # the shared UNet is left as it was
            moved = {**kw, "sample": kw["sample"] + 0.5}
            assert not torch.equal(wrapper.cached_call(**moved).sample, any_unet(**moved).sample)


def test_steps_are_full_every_interval_and_a_new_trajectory_starts_full(tiny_attn_unet):
    wrapper = CachedUNet(tiny_attn_unet, CacheSettings(interval=3, branch=1))
    kinds: list[str] = []
    # hooks on modules inside: a replayed module's own hooks still fire around its cached output
    tiny_attn_unet.conv_in.register_forward_hook(lambda *_: kinds.append("C"))
    tiny_attn_unet.mid_block.resnets[0].register_forward_hook(lambda *_: kinds.__setitem__(-1, "F"))
    kw = _sample_kwargs(tiny_attn_unet, num_steps=7)
    generate(wrapper, _ddim(), **kw)
    generate(wrapper, _ddim(), **{**kw, "num_steps": 2})  # timesteps go up again: step 0 of a new one
    assert "".join(kinds) == "FCCFCCF" + "FC"
    with pytest.raises(RuntimeError, match="needs a full step"):
        CachedUNet(tiny_attn_unet, CacheSettings(2, 0)).cached_call(**unet_inputs(tiny_attn_unet))


def test_a_cached_step_runs_only_the_shallow_branch(tiny_unet):
    # layers_per_block 2, two levels: conv_in, r0, r1, down0 | r0, r1 -> branches 0..5
    assert num_branches(tiny_unet) == 6
    wrapper = CachedUNet(tiny_unet, CacheSettings(interval=2, branch=2))
    kw = unet_inputs(tiny_unet)
    calls: list[str] = []
    for name, m in tiny_unet.named_modules():  # the convolutions inside (a replayed module's hooks still fire)
        if name in ("conv_in", "conv_out") or name.endswith((".conv1", "samplers.0.conv")):
            m.register_forward_hook(lambda *_, n=name: calls.append(n.removesuffix(".conv1").removesuffix(".conv")))
    with torch.no_grad():
        wrapper.full_call(**kw)
        calls.clear()
        wrapper.cached_call(**kw)
    # branch 2 is down block 0's second resnet, consumed by the first resnet of the last up block
    assert calls == ["conv_in", "down_blocks.0.resnets.0", "down_blocks.0.resnets.1",
                     "up_blocks.1.resnets.0", "up_blocks.1.resnets.1", "up_blocks.1.resnets.2", "conv_out"]


def test_settings_and_unsupported_unets_are_rejected(tiny_unet):
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        CacheSettings(interval=0)
    with pytest.raises(ValueError, match="branch must be an integer >= 0"):
        CacheSettings(branch=-1)
    with pytest.raises(ValueError, match=r"cache branch 6 out of range: this UNet has 6 \(0..5\)"):
        CachedUNet(tiny_unet, CacheSettings(2, 6))
    from diffusers import UNet2DModel

    skip = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                       layers_per_block=1, attention_head_dim=4, down_block_types=("SkipDownBlock2D",) * 2,
                       up_block_types=("SkipUpBlock2D",) * 2)
    with pytest.raises(ValueError, match="SkipDownBlock2D \\(a skip block\\) is not supported"):
        CachedUNet(skip, CacheSettings(2, 0))


@pytest.mark.parametrize("build", ["attn_unet", "cond_unet"])
def test_cached_macs_are_the_full_call_minus_the_skipped_modules(build):
    from tests.conftest import UNET_BUILDERS

    unet = UNET_BUILDERS[build]()
    per_branch = branch_macs(unet)
    by_module = unet_macs_by_module(unet).by_module
    full = count_unet_macs(unet)
    assert [m.full for m in per_branch] == [full] * num_branches(unet)
    cached = [m.cached for m in per_branch]
    assert cached == sorted(cached) and cached[-1] < full  # deeper branch: more computed, mid block never
    from experts.caching import _skipped_modules

    names = {id(m): n for n, m in unet.named_modules()}
    for b, m in enumerate(per_branch):
        assert m.cached == full - sum(by_module.get(names[id(s)], 0) for s in _skipped_modules(unet, b))
    assert cache_macs(unet, branch=1) == per_branch[1]


def test_a_trajectorys_counted_macs_are_the_full_and_cached_calls_summed():
    """FlopCounterMode (MATH attention) around every call of a real DDIM trajectory: each cached
    step costs the counted cached MACs, and the trajectory is CacheMacs.trajectory."""
    unet = build_tiny_cond_unet()
    n, interval, branch = 7, 3, 2
    macs = cache_macs(unet, branch=branch, encoder_seq_len=5)  # the sampled context has 5 tokens
    wrapper = CachedUNet(unet, CacheSettings(interval, branch))
    per_call: list[int] = []

    def counted(x, t, **kw):
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            out = wrapper(x, t, **kw)
        per_call.append(counter.get_total_flops() // 2)
        return out

    kw = {**_sample_kwargs(unet, num_steps=n), "num_images": 2, "batch_size": 2}
    generate(counted, _ddim(), **kw)
    assert per_call == [2 * (macs.full if i % interval == 0 else macs.cached) for i in range(n)]
    assert sum(per_call) == 2 * macs.trajectory(n, interval) == 2 * (3 * macs.full + 4 * macs.cached)
    assert full_steps(n, interval) == 3
    assert macs.full == reference_macs(unet, unet_example_inputs(unet, encoder_seq_len=5)) > macs.cached


def test_demo_sized_unet_ratios_and_the_choice_per_budget():
    from nas.embedded import build_embedded_unet

    unet = build_embedded_unet({"block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
                                "attention": True}).eval()
    per_branch = branch_macs(unet)
    assert len(per_branch) == 6 and per_branch[0].cached / per_branch[0].full < 0.15
    best = choose_cache(per_branch, num_steps=10, budget=0.5)
    assert best is not None and best.ratio <= 0.5 and best.trajectory_macs == best.macs.trajectory(
        10, best.settings.interval)
    assert choose_cache(per_branch, num_steps=10, budget=0.2) is None  # the cheapest is ~0.2 of the base
    assert choose_cache([CacheMacs(10, 1)], num_steps=10, budget=1.0).settings == CacheSettings(1, 0)
