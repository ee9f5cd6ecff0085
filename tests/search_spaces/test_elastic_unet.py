"""The built-in elastic UNet space and supernet on three tiny UNet configurations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search_spaces import ElasticUNet, SpaceOptions
from search_spaces.testing import ElasticUNetContract
from tests.conftest import UNET_BUILDERS, unet_inputs

CONFIGS = sorted(UNET_BUILDERS)
_NETS: dict[str, ElasticUNet] = {}


def cached_supernet(name: str) -> ElasticUNet:
    """One supernet per configuration for the whole module (construction counts MACs once)."""
    if name not in _NETS:
        _NETS[name] = ElasticUNet(UNET_BUILDERS[name]())
    net = _NETS[name]
    net.set_active(net.space.full())
    return net


@pytest.mark.parametrize("config", CONFIGS)
class TestElasticUNetContract(ElasticUNetContract):
    n_archs = 19  # with the smallest: 20 archs
    n_saved = 5

    @pytest.fixture
    def unet(self, config):
        return UNET_BUILDERS[config]()

    @pytest.fixture
    def supernet(self, config):
        return cached_supernet(config)

    @pytest.fixture
    def inputs(self, supernet):
        return unet_inputs(supernet.unet, batch_size=2, seed=3)


@pytest.mark.parametrize("config", CONFIGS)
def test_sampler_gives_mostly_distinct_archs(config):
    space = cached_supernet(config).space
    rng = np.random.default_rng(42)
    archs = [space.smallest()] + [space.sample(rng) for _ in range(19)]
    assert len(set(archs)) >= 15


def test_supernet_without_reordering_is_bit_exact(tiny_attn_unet):
    kw = unet_inputs(tiny_attn_unet)
    net = ElasticUNet(tiny_attn_unet, importance="none")
    with torch.no_grad():
        assert torch.equal(net(**kw).sample, tiny_attn_unet(**kw).sample)


@pytest.mark.parametrize("config", CONFIGS)
def test_materialised_model_is_physically_smaller(config):
    net = cached_supernet(config)
    small = net.materialize(net.space.smallest())
    n_full = sum(p.numel() for p in net.unet.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < 0.8 * n_full
    assert net.space.macs(net.space.smallest()) < 0.6 * net.space.total_macs


def test_set_active_does_not_allocate_new_mask_tensors(tiny_unet):
    net = ElasticUNet(tiny_unet)
    before = {k: v.data_ptr() for k, v in net._masks.items()}
    rng = np.random.default_rng(0)
    for _ in range(5):
        net.set_active(net.space.sample(rng))
    assert {k: v.data_ptr() for k, v in net._masks.items()} == before


def _one_hot_weights(space, arch) -> dict:
    """Straight one-hot relaxed weights (requiring grad) selecting ``arch``."""
    weights = {}
    for d in space.free_dimensions():
        w = torch.zeros(len(d.choices))
        w[d.index(arch[d.name])] = 1.0
        weights[d.name] = w.requires_grad_(True)
    return weights


def test_relaxed_one_hot_equals_hard_arch_and_is_differentiable(tiny_attn_unet):
    net = ElasticUNet(tiny_attn_unet)
    kw = unet_inputs(net.unet)
    arch = net.space.sample(np.random.default_rng(5))
    weights = _one_hot_weights(net.space, arch)
    net.set_active_relaxed(weights)
    out_relaxed = net(**kw).sample
    out_relaxed.pow(2).mean().backward()
    assert any(w.grad is not None and w.grad.abs().sum() > 0 for w in weights.values())
    net.set_active(arch)
    with torch.no_grad():
        out_hard = net(**kw).sample
    torch.testing.assert_close(out_relaxed.detach(), out_hard, rtol=1e-5, atol=1e-5)
    assert float(net.space.macs_relaxed(weights).detach()) == pytest.approx(net.space.macs(arch))


def test_coupled_depth_dims_are_tied(tiny_unet):
    space = ElasticUNet(tiny_unet).space
    tied = [d for d in space.dimensions() if d.tied_to]
    assert tied, "the tiny UNet has removable down/up layer pairs"
    for d in tied:
        assert d.name.startswith("up.") and d.tied_to.startswith("down.")


def test_options_shape_the_space(tiny_attn_unet):
    only_width = ElasticUNet(tiny_attn_unet, SpaceOptions(depth=False, heads=False, attention_depth=False)).space
    kinds = {d.kind for d in only_width.dimensions()}
    assert kinds == {"width"}
    with pytest.raises(ValueError, match="width_fractions"):
        SpaceOptions(width_fractions=(0.0, 1.0))


# ----------------------------------------------------------------------------- invalid archs
def _invalid_cases():
    space = cached_supernet("unet").space
    full = dict(space.full())
    width = next(d for d in space.free_dimensions() if d.kind == "width")
    gs = space.group_size[width.name]
    tied = next(d for d in space.dimensions() if d.tied_to)
    return [
        ("unknown key", {**full, "down.9.resnets.0.width": 8}, "unknown key 'down.9.resnets.0.width'"),
        ("width not a multiple of the group size", {**full, width.name: gs + 1},
         f"{width.name}: width {gs + 1} is not a multiple of the GroupNorm group size {gs}"),
        ("broken skip pairing", {**full, tied.name: False},
         f"{tied.name}: coupling rule broken \\(skip pairing"),
        ("out-of-range choice", {**full, width.name: 10 * width.full},
         f"{width.name}: choice {10 * width.full} is out of range"),
        ("wrong type", {**full, tied.tied_to: 1}, f"{tied.tied_to}: choice 1 has the wrong type"),
        ("missing key", {k: v for k, v in full.items() if k != width.name}, f"missing key '{width.name}'"),
    ]


@pytest.mark.parametrize("case", range(6), ids=["unknown-key", "group-multiple", "skip-pairing",
                                                  "out-of-range", "wrong-type", "missing-key"])
def test_invalid_arch_names_the_problem(case):
    label, arch, pattern = _invalid_cases()[case]
    net = cached_supernet("unet")
    with pytest.raises(ValueError, match=pattern):
        net.set_active(arch)
    with pytest.raises(ValueError, match=pattern):
        net.materialize(arch)


def test_supernet_save_and_load_round_trip(tmp_path, tiny_cond_unet):
    net = ElasticUNet(tiny_cond_unet)
    net.save_pretrained(tmp_path / "sn")
    again = ElasticUNet.from_pretrained(tmp_path / "sn")
    assert again.space.names() == net.space.names()
    arch = net.space.sample(np.random.default_rng(0))
    kw = unet_inputs(net.unet)
    net.set_active(arch)
    again.set_active(arch)
    with torch.no_grad():
        assert torch.equal(net(**kw).sample, again(**kw).sample)


def _all_branches_dropped(space) -> dict:
    return {d.name: 0 for d in space.free_dimensions() if d.kind == "width"}


def test_width_zero_by_hand_equals_shortcut_over_scale(tiny_unet):
    """The dropped block computes shortcut(x) / output_scale_factor, nothing else (no conv2 bias)."""
    net = ElasticUNet(tiny_unet, importance="none")
    d = next(d for d in net.space.free_dimensions() if d.kind == "width")
    resnet = net.unet.get_submodule(net.space.site(d.name).module)
    x = torch.randn(2, resnet.in_channels, 8, 8)
    temb = torch.randn(2, resnet.time_emb_proj.in_features)
    net.set_active(net.space.complete({d.name: 0}))
    with torch.no_grad():
        out = resnet(x, temb)
        ref = resnet.conv_shortcut(x) if resnet.conv_shortcut is not None else x
    torch.testing.assert_close(out, ref / resnet.output_scale_factor, rtol=0, atol=1e-6)


def test_relaxed_width_zero_one_hot_equals_hard(tiny_unet):
    net = ElasticUNet(tiny_unet)
    kw = unet_inputs(net.unet)
    arch = net.space.complete(_all_branches_dropped(net.space))
    weights = _one_hot_weights(net.space, arch)
    net.set_active_relaxed(weights)
    out_relaxed = net(**kw).sample
    out_relaxed.sum().backward()
    net.set_active(arch)
    with torch.no_grad():
        out_hard = net(**kw).sample
    torch.testing.assert_close(out_relaxed.detach(), out_hard, rtol=1e-5, atol=1e-5)
    # at width 0 the gradient says what keeping the branch would change: the agent can learn
    # to keep or drop it
    assert all(float(w.grad[1:].abs().sum()) > 0 for n, w in weights.items() if n.endswith(".width"))


def test_branch_depth_option_and_old_option_files(tiny_unet):
    on = ElasticUNet(tiny_unet).space
    off = ElasticUNet(tiny_unet, SpaceOptions(branch_depth=False)).space
    widths_on = [d for d in on.dimensions() if d.kind == "width"]
    assert all(d.choices[0] == 0 for d in widths_on)
    assert all(d.choices[0] > 0 for d in off.dimensions() if d.kind == "width")
    assert on.macs(on.smallest()) < off.macs(off.smallest())
    # uniform width never means "drop every branch"
    assert all(on.uniform(0.0)[d.name] > 0 for d in widths_on)
    # files written before the option existed meant no width 0
    assert SpaceOptions.from_dict({"width_fractions": [0.5, 1.0], "depth": True}).branch_depth is False
    with pytest.raises(ValueError, match="unknown space option"):
        SpaceOptions.from_dict({"widths": [1.0]})


def test_materialised_model_is_independent_of_the_supernet(tiny_unet):
    """A materialised copy carries no hook of the supernet: switching the supernet to another
    arch (width 0 included) afterwards leaves the copy's output unchanged."""
    net = ElasticUNet(tiny_unet)
    kw = unet_inputs(net.unet)
    sub = net.materialize(net.space.full())
    plain = net.plain_unet()
    with torch.no_grad():
        before, before_plain = sub(**kw).sample, plain(**kw).sample
        net.set_active(net.space.complete(_all_branches_dropped(net.space)))
        assert torch.equal(sub(**kw).sample, before)
        assert torch.equal(plain(**kw).sample, before_plain)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in sub.modules())


def test_deepcopy_is_an_independent_supernet(tiny_unet):
    import copy

    net = ElasticUNet(tiny_unet)
    kw = unet_inputs(net.unet)
    rng = np.random.default_rng(1)
    arch = net.space.sample(rng)
    net.set_active(arch)
    twin = copy.deepcopy(net)
    assert twin.active == arch and twin.space is net.space
    with torch.no_grad():
        ref = net(**kw).sample
        assert torch.equal(twin(**kw).sample, ref)
        net.set_active(net.space.smallest())  # the original moves; the copy must not
        assert torch.equal(twin(**kw).sample, ref)
        other = net.space.sample(rng)
        twin.set_active(other)
        net.set_active(other)
        assert torch.equal(twin(**kw).sample, net(**kw).sample)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(twin.parameters(), net.parameters()))


def test_product_space_relaxed_macs_use_the_parts_exact_model(tiny_unet):
    """A mixture's relaxed MACs are the step-weighted sum of each expert space's own relaxed
    MACs (UNetSpace's expectation with layer/width interactions), not a first-order sketch."""
    from search_spaces import ProductSpace

    space = ElasticUNet(tiny_unet).space
    mix = ProductSpace({"e0": space, "e1": space}, weights={"e0": 3, "e1": 2})
    g = torch.Generator().manual_seed(0)
    w = {d.name: torch.softmax(torch.randn(len(d.choices), generator=g), 0) for d in space.free_dimensions()}
    w1 = {k: v.flip(0) for k, v in w.items()}
    joined = {**{f"e0/{k}": v for k, v in w.items()}, **{f"e1/{k}": v for k, v in w1.items()}}
    expected = 3 * space.macs_relaxed(w) + 2 * space.macs_relaxed(w1)
    assert float(mix.macs_relaxed(joined)) == pytest.approx(float(expected), rel=1e-12)
    # only one expert given: the other counts at full MACs
    only = {f"e0/{k}": v for k, v in w.items()}
    assert float(mix.macs_relaxed(only)) == pytest.approx(float(3 * space.macs_relaxed(w) + 2 * space.total_macs))
    with pytest.raises(ValueError, match="unknown"):
        mix.macs_relaxed({"e9/x": torch.ones(2)})
