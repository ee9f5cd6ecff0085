"""The search-space API itself, and a user-defined space (the README's example) joining the contract."""

from __future__ import annotations

import numpy as np
import pytest

from search_spaces import Arch, Dimension, ProductSpace, SearchSpace, SimpleSpace
from search_spaces.testing import SearchSpaceContract


class TwoLayerMLPSpace(SearchSpace):
    """The README's user-defined space: a 2-layer MLP with elastic hidden width and depth."""

    def __init__(self, d_in: int = 32, d_hidden: int = 64):
        self.d_in, self.d_hidden = d_in, d_hidden

    def dimensions(self):
        return (
            Dimension("fc1.width", (16, 32, 48, 64)),
            Dimension("fc2.depth", (False, True), kind="depth"),
        )

    def macs(self, arch):
        w = arch["fc1.width"]
        return self.d_in * w + (w * w if arch["fc2.depth"] else 0) + w * 10


class TestUserDefinedSpace(SearchSpaceContract):
    @pytest.fixture
    def space(self):
        return TwoLayerMLPSpace()


def _coupled() -> SimpleSpace:
    return SimpleSpace(
        [
            Dimension("down.depth", (False, True), "depth"),
            Dimension("up.depth", (False, True), "depth", tied_to="down.depth", rule="up follows down"),
            Dimension("w", (1, 2, 3)),
        ],
        macs_fn=lambda a: 10 * a["w"] + 5 * a["down.depth"] + 5 * a["up.depth"],
    )


class TestCoupledSimpleSpace(SearchSpaceContract):
    @pytest.fixture
    def space(self):
        return _coupled()


class TestProductSpace(SearchSpaceContract):
    @pytest.fixture
    def space(self):
        return ProductSpace({"e0": _coupled(), "e1": TwoLayerMLPSpace()}, weights={"e0": 3, "e1": 2})


def test_arch_is_immutable_sorted_and_typed():
    a = Arch({"b": 2, "a": True})
    assert list(a) == ["a", "b"]
    with pytest.raises(TypeError):
        a["a"] = False  # type: ignore[index]
    assert Arch({"x": 1}) != Arch({"x": True}), "int 1 and bool True are different choices"
    assert {Arch({"x": 1}): "v"}[Arch({"x": 1})] == "v"


def test_dimension_rejects_bad_definitions():
    with pytest.raises(ValueError, match="no choices"):
        Dimension("x", ())
    with pytest.raises(ValueError, match="duplicate"):
        Dimension("x", (1, 1))
    with pytest.raises(ValueError, match="int or bool"):
        Dimension("x", (1.5,))  # type: ignore[arg-type]


def test_product_space_macs_are_weighted_and_split_joins():
    s = _coupled()
    p = ProductSpace({"a": s, "b": s}, weights={"a": 2, "b": 1})
    full = p.full()
    assert p.macs(full) == 3 * s.macs(s.full())
    parts = p.split(full)
    assert p.join(parts) == full
    with pytest.raises(ValueError, match="a/up.depth"):
        p.validate(full.with_values({"a/up.depth": False}))


def test_sample_respects_ties():
    s = _coupled()
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = s.sample(rng)
        assert a["up.depth"] == a["down.depth"]


def test_first_order_relaxed_macs_are_differentiable():
    import torch

    s = TwoLayerMLPSpace()
    w = {"fc1.width": torch.tensor([0.0, 0.0, 0.0, 1.0], requires_grad=True),
         "fc2.depth": torch.tensor([0.0, 1.0], requires_grad=True)}
    m = s.macs_relaxed(w)
    m.backward()
    assert float(m.detach()) == s.macs(s.full())
    assert w["fc1.width"].grad is not None and w["fc1.width"].grad[0] < w["fc1.width"].grad[3]
