"""MixtureSpace: the product space of a mixture, part names, arch <-> Allocation."""

from __future__ import annotations

import numpy as np
import pytest

from experts import Allocation, MixtureSpace
from experts.intervals import Intervals
from search_spaces import Arch, Dimension, ProductSpace, SimpleSpace
from search_spaces.errors import UserError


def _expert_space(scale: int) -> SimpleSpace:
    dims = [Dimension("b0.width", (8, 16, 32), "width"), Dimension("b1.width", (8, 16, 32), "width"),
            Dimension("s0.depth", (False, True), "depth")]
    return SimpleSpace(dims, macs_fn=lambda a: scale * (a["b0.width"] + 2 * a["b1.width"] + 5 * a["s0.depth"]))


@pytest.fixture
def mix() -> MixtureSpace:
    spaces = [_expert_space(1), _expert_space(3), _expert_space(7)]
    return MixtureSpace(spaces, steps_per_expert=[5, 3, 2], intervals=Intervals(1000, (300, 700)))


def test_space_is_the_product_space_built_by_hand(mix):
    spaces = mix.parts
    steps = (5, 3, 2)
    by_hand = ProductSpace({f"e{k}": s for k, s in enumerate(spaces)},
                           weights={f"e{k}": float(s) for k, s in enumerate(steps)})
    assert list(mix.space.parts) == ["e0", "e1", "e2"] == [MixtureSpace.part_name(k) for k in range(3)]
    assert mix.space.weights == by_hand.weights
    assert mix.space.dimensions() == by_hand.dimensions()
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = by_hand.sample(rng)
        assert mix.space.macs(arch) == by_hand.macs(arch)


def test_round_trip_arch_allocation_arch(mix):
    rng = np.random.default_rng(1)
    for _ in range(20):
        arch = mix.space.sample(rng)
        alloc = mix.to_allocation(arch, method="search", budget_ratio=0.5, base_trajectory_macs=10_000,
                                  info={"x": 1})
        assert alloc.trajectory_macs == mix.space.macs(arch)
        assert alloc.steps_per_expert == (5, 3, 2)
        assert alloc.intervals == mix.intervals
        assert alloc.info == {"x": 1}
        assert mix.from_allocation(alloc) == arch
        assert mix.from_allocation(Allocation.from_json(alloc.to_json())) == arch
        assert mix.join(mix.split(arch)) == arch


def test_split_is_in_interval_order(mix):
    archs = [Arch({"b0.width": 8, "b1.width": 16, "s0.depth": True}),
             Arch({"b0.width": 32, "b1.width": 8, "s0.depth": False}),
             Arch({"b0.width": 16, "b1.width": 32, "s0.depth": True})]
    arch = mix.join(archs)
    assert arch["e1/b0.width"] == 32
    assert mix.split(arch) == archs
    assert mix.space.macs(arch) == sum(p.macs(a) * s for p, a, s in zip(mix.parts, archs, (5, 3, 2)))


def test_full_trajectory_macs(mix):
    assert mix.full_trajectory_macs() == mix.space.macs(mix.space.full())


@pytest.mark.parametrize("key", ["e3/b0.width", "e0/nope", "b0.width", "x/b0.width"])
def test_unknown_key_is_named(mix, key):
    arch = dict(mix.space.full())
    arch[key] = 8
    with pytest.raises(ValueError, match=f"unknown key {key!r}"):
        mix.split(arch)
    with pytest.raises(ValueError, match="unknown key"):
        mix.to_allocation(arch, method="search", budget_ratio=0.5, base_trajectory_macs=1)


def test_bad_inputs(mix):
    with pytest.raises(ValueError, match="one space and one step count per interval"):
        MixtureSpace(mix.parts[:2], [1, 2, 3], Intervals(1000, (300, 700)))
    with pytest.raises(ValueError, match="2 archs for 3 experts"):
        mix.join([{}, {}])
    alloc = mix.to_allocation(mix.space.full(), method="search", budget_ratio=1.0, base_trajectory_macs=1)
    other = Allocation(alloc.method, alloc.budget_ratio, Intervals(1000, (400, 700)), alloc.archs,
                       alloc.macs_per_expert, alloc.steps_per_expert, alloc.base_trajectory_macs)
    with pytest.raises(ValueError, match="intervals"):
        mix.from_allocation(other)
    two = Allocation("search", 1.0, Intervals(1000, (500,)), alloc.archs[:2], (1, 1), (1, 1), 10)
    with pytest.raises(ValueError, match="2 experts"):
        mix.from_allocation(two)
    bad = Allocation(alloc.method, alloc.budget_ratio, alloc.intervals,
                     (Arch({**alloc.archs[0], "b0.width": 12}), *alloc.archs[1:]),
                     alloc.macs_per_expert, alloc.steps_per_expert, alloc.base_trajectory_macs)
    with pytest.raises(ValueError):
        mix.from_allocation(bad)
    fractional = MixtureSpace(mix.parts, [5.5, 3, 2], mix.intervals)
    with pytest.raises(UserError, match="whole"):
        fractional.to_allocation(mix.space.full(), method="router", budget_ratio=1.0, base_trajectory_macs=1)


def test_same_allocation_as_the_search_conversion(mix):
    from nas.search.allocations import allocation_to_arch, arch_to_allocation

    arch = mix.space.sample(np.random.default_rng(3))
    theirs = arch_to_allocation(mix.space, arch, mix.intervals, 0.5, method="search")
    ours = mix.to_allocation(arch, method="search", budget_ratio=0.5, base_trajectory_macs=mix.full_trajectory_macs())
    assert ours == theirs and ours.to_dict() == theirs.to_dict()
    assert allocation_to_arch(mix.space, ours) == mix.from_allocation(ours)


def test_from_product_rebuilds_the_same_space(mix):
    again = MixtureSpace.from_product(mix.space, mix.intervals)
    assert again.space.dimensions() == mix.space.dimensions()
    assert again.space.weights == mix.space.weights
    assert again.steps_per_expert == (5.0, 3.0, 2.0)
    with pytest.raises(UserError, match="ProductSpace"):
        MixtureSpace.from_product(mix.parts[0], Intervals(1000))
    with pytest.raises(UserError, match="intervals"):
        MixtureSpace.from_product(mix.space, Intervals(1000, (500,)))
    with pytest.raises(ValueError, match="named e0, e1"):
        MixtureSpace.from_product(ProductSpace({"a": mix.parts[0], "b": mix.parts[1]}), Intervals(1000, (500,)))
