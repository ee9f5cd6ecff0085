"""The contract every SearchSpace must pass (built-in or user-defined), as pytest test cases.

A space joins by subclassing :class:`SearchSpaceContract` in a test file of its own project and
providing a ``space`` fixture, as Optuna's samplers join their shared test cases::

    import pytest
    from search_spaces.testing import SearchSpaceContract

    class TestMySpace(SearchSpaceContract):
        @pytest.fixture
        def space(self):
            return MySpace()

Then ``pytest`` runs every case below on ``MySpace``. :class:`ElasticUNetContract` does the
same for a diffusers UNet made elastic (:class:`~search_spaces.ElasticUNet`): provide a
``unet`` fixture, and it checks the supernet's space with every case above plus the supernet
itself (the full arch reproduces the UNet; sub-networks materialise, count and save exactly;
the sliced evaluation path equals the masked one and costs the arch's MACs).
This module needs ``pytest`` (the ``dev`` extra); importing :mod:`search_spaces` does not
import it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

from search_spaces import Arch, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from search_spaces import ElasticUNet

__all__ = ["ElasticUNetContract", "SearchSpaceContract", "random_unet_inputs"]


class SearchSpaceContract:
    """Shared cases; subclasses provide a ``space`` fixture.

    Attributes:
        n_samples: random archs (and decoded random vectors) each sampling case checks.
    """

    n_samples = 20

    def test_dimensions_are_well_formed(self, space: SearchSpace) -> None:
        dims = space.dimensions()
        assert dims, "a space needs at least one dimension"
        names = [d.name for d in dims]
        assert len(set(names)) == len(names)
        for d in dims:
            assert len(d.choices) >= 1
            if d.tied_to is not None:
                assert d.tied_to in names

    def test_full_and_smallest_are_valid(self, space: SearchSpace) -> None:
        space.validate(space.full())
        space.validate(space.smallest())
        assert space.macs(space.smallest()) <= space.macs(space.full())

    def test_samples_are_valid_and_deterministic(self, space: SearchSpace) -> None:
        a = [space.sample(np.random.default_rng(7)) for _ in range(2)]
        assert a[0] == a[1], "the same rng seed must give the same arch"
        rng = np.random.default_rng(0)
        for _ in range(self.n_samples):
            arch = space.sample(rng)
            space.validate(arch)
            assert space.macs(space.smallest()) <= space.macs(arch) <= space.macs(space.full())

    def test_decoded_vectors_are_valid(self, space: SearchSpace) -> None:
        rng = np.random.default_rng(4)
        n = len(space.free_dimensions())
        for _ in range(self.n_samples):
            vec = rng.random(n)
            arch = space.decode(vec)
            space.validate(arch)
            assert space.decode(vec) == arch, "decode must be deterministic"

    def test_json_round_trip(self, space: SearchSpace) -> None:
        rng = np.random.default_rng(1)
        for _ in range(5):
            arch = space.sample(rng)
            text = arch.to_json()
            assert Arch.from_json(text) == arch
            assert json.loads(text) == arch.to_dict()
            assert hash(Arch.from_json(text)) == hash(arch)

    def test_vector_round_trip(self, space: SearchSpace) -> None:
        rng = np.random.default_rng(2)
        for _ in range(5):
            arch = space.sample(rng)
            vec = space.encode(arch)
            assert vec.shape == (len(space.free_dimensions()),)
            assert np.all((vec >= 0) & (vec <= 1))
            assert space.decode(vec) == arch

    def test_unknown_key_is_rejected(self, space: SearchSpace) -> None:
        bad = dict(space.full())
        bad["no.such.dimension"] = 1
        with pytest.raises(ValueError, match="no.such.dimension"):
            space.validate(bad)

    def test_missing_key_is_rejected(self, space: SearchSpace) -> None:
        bad = dict(space.full())
        name = next(iter(bad))
        del bad[name]
        with pytest.raises(ValueError, match=name):
            space.validate(bad)

    def test_out_of_range_choice_is_rejected(self, space: SearchSpace) -> None:
        for d in space.free_dimensions():
            if isinstance(d.full, bool):
                continue
            bad = dict(space.full())
            bad[d.name] = max(d.choices) + 1000
            with pytest.raises(ValueError, match=d.name.replace(".", r"\.")):
                space.validate(bad)
            return

    def test_macs_rejects_a_misspelt_key_and_a_value_that_is_not_a_choice(self, space: SearchSpace) -> None:
        bad = dict(space.full())
        bad["no.such.dimension"] = 1
        with pytest.raises(ValueError, match="no.such.dimension"):
            space.macs(bad)
        d = space.free_dimensions()[0]
        bad = dict(space.full())
        bad[d.name] = 7 if isinstance(d.full, bool) else max(d.choices) + 1000  # not a choice
        with pytest.raises(ValueError, match=d.name.replace(".", r"\.")):
            space.macs(bad)

    def test_broken_tie_is_rejected(self, space: SearchSpace) -> None:
        tied = [d for d in space.dimensions() if d.tied_to is not None]
        if not tied:
            pytest.skip("space has no coupled dimensions")
        d = tied[0]
        other = next(c for c in d.choices if c != space.full()[d.name])
        bad = dict(space.full())
        bad[d.name] = other
        with pytest.raises(ValueError, match="coupling rule"):
            space.validate(bad)

    def test_macs_are_monotone_in_each_dimension(self, space: SearchSpace) -> None:
        full = space.full()
        for d in space.free_dimensions():
            costs = [space.macs(space.repair(space.complete({**full, d.name: c}))) for c in d.choices]
            assert costs == sorted(costs), f"{d.name}: MACs not increasing along its choices {costs}"

    def test_relaxed_macs_match_at_one_hot(self, space: SearchSpace) -> None:
        rng = np.random.default_rng(3)
        for _ in range(3):
            arch = space.sample(rng)
            w = {}
            for d in space.free_dimensions():
                v = torch.zeros(len(d.choices), dtype=torch.float64)
                v[d.index(arch[d.name])] = 1.0
                w[d.name] = v
            relaxed = float(space.macs_relaxed(w))
            assert relaxed == pytest.approx(space.macs(arch), rel=1e-6)


def random_unet_inputs(unet: torch.nn.Module, batch_size: int = 2, seed: int = 0) -> dict[str, Any]:
    """Keyword inputs of one call of a diffusers UNet, shaped from its config, with random
    sample and conditioning (seeded) and distinct timesteps."""
    from search_spaces.macs import unet_example_inputs

    g = torch.Generator().manual_seed(seed)
    kw = unet_example_inputs(unet, batch_size=batch_size, encoder_seq_len=5, device="cpu")
    for k, v in list(kw.items()):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            kw[k] = torch.randn(v.shape, generator=g, dtype=v.dtype)
    kw["timestep"] = torch.tensor([10 + 37 * i for i in range(batch_size)])
    return kw


class ElasticUNetContract(SearchSpaceContract):
    """The supernet cases, and every :class:`SearchSpaceContract` case on its space.

    Subclasses provide a ``unet`` fixture (a diffusers ``UNet2DModel`` /
    ``UNet2DConditionModel``, left untouched); they may override ``supernet`` (to reuse one
    across cases: construction counts MACs) and ``inputs`` (keyword inputs of one call).

    Attributes:
        n_archs: random archs (after the smallest) that must materialise exactly.
        n_saved: how many of those also go through save/load (the slow part).
        atol: largest |supernet - materialised| output difference.
        full_atol: largest |supernet at full arch - UNet| difference (channels are permuted
            by importance, so float sums run in another order).
        macs_rtol: largest relative gap between the analytic MACs and fvcore's count.
        sliced_atol: largest |sliced - masked| output difference (same arch).
    """

    n_archs = 5
    n_saved = 2
    atol = 1e-4
    full_atol = 1e-5
    macs_rtol = 0.01
    sliced_atol = 1e-5

    @pytest.fixture
    def supernet(self, unet: torch.nn.Module) -> "ElasticUNet":
        from search_spaces import ElasticUNet

        return ElasticUNet(unet)

    @pytest.fixture
    def space(self, supernet: "ElasticUNet") -> SearchSpace:
        return supernet.space

    @pytest.fixture
    def inputs(self, supernet: "ElasticUNet") -> dict[str, Any]:
        return random_unet_inputs(supernet.unet, batch_size=2, seed=3)

    def test_full_arch_reproduces_the_unet(self, unet: torch.nn.Module, supernet: "ElasticUNet",
                                           inputs: dict[str, Any]) -> None:
        supernet.set_active(supernet.space.full())
        with torch.no_grad():
            ref, out = unet(**inputs).sample, supernet(**inputs).sample
        torch.testing.assert_close(out, ref, rtol=self.full_atol, atol=self.full_atol)

    def test_random_archs_materialise_exactly(self, supernet: "ElasticUNet", inputs: dict[str, Any],
                                              tmp_path: "Path") -> None:
        """Materialised output = supernet output, analytic MACs = fvcore's count, and save/load
        gives an identical model."""
        from search_spaces.macs import count_unet_macs
        from search_spaces.materialize import arch_of, load_materialized, save_materialized

        rng = np.random.default_rng(42)
        archs = [supernet.space.smallest()] + [supernet.space.sample(rng) for _ in range(self.n_archs)]
        try:
            for i, arch in enumerate(archs):
                supernet.set_active(arch)
                sub = supernet.materialize(arch)
                with torch.no_grad():
                    out_super, out_sub = supernet(**inputs).sample, sub(**inputs).sample
                assert (out_super - out_sub).abs().max().item() <= self.atol, f"arch {i}: outputs differ"
                fv = count_unet_macs(sub, batch_size=1)
                macs = supernet.space.macs(arch)
                assert abs(macs - fv) <= self.macs_rtol * fv, f"arch {i}: MACs {macs} vs fvcore {fv}"
                if i < self.n_saved:
                    save_materialized(sub, tmp_path / f"a{i}")
                    again = load_materialized(tmp_path / f"a{i}")
                    assert arch_of(again) == arch
                    with torch.no_grad():
                        assert torch.equal(again(**inputs).sample, out_sub)
        finally:
            supernet.set_active(supernet.space.full())

    def test_width_zero_drops_the_residual_branch_exactly(self, supernet: "ElasticUNet", inputs: dict[str, Any],
                                                          tmp_path: "Path") -> None:
        """Width 0 keeps only the shortcut: supernet (masks + bias hook) == materialised
        ShortcutResnet, the branch's parameters are gone, MACs are exact, the folder round-trips."""
        from search_spaces.macs import count_unet_macs
        from search_spaces.materialize import ShortcutResnet, load_materialized, save_materialized

        space = supernet.space
        dropped = {d.name: 0 for d in space.free_dimensions() if d.kind == "width" and 0 in d.choices}
        if not dropped:
            pytest.skip("no ResNet width offers 0 (SpaceOptions.branch_depth is off)")
        arch = space.complete(dropped)
        supernet.set_active(arch)
        try:
            sub = supernet.materialize(arch)
            with torch.no_grad():
                out_super, out_sub = supernet(**inputs).sample, sub(**inputs).sample
        finally:
            supernet.set_active(space.full())
        assert (out_super - out_sub).abs().max().item() <= self.full_atol
        shortcut_blocks = [m for m in sub.modules() if isinstance(m, ShortcutResnet)]
        assert shortcut_blocks and not any(hasattr(m, "conv1") for m in shortcut_blocks)
        assert space.macs(arch) == count_unet_macs(sub, batch_size=1)
        save_materialized(sub, tmp_path / "m")
        with torch.no_grad():
            assert torch.equal(load_materialized(tmp_path / "m")(**inputs).sample, out_sub)

    def test_sliced_equals_masked(self, supernet: "ElasticUNet", inputs: dict[str, Any]) -> None:
        """``set_active(arch, mode="sliced")`` gives the masked output on the full and
        smallest archs, every residual branch dropped (width 0) and random archs, and reuses
        one cached sub-network per arch."""
        space = supernet.space
        rng = np.random.default_rng(11)
        archs = [space.full(), space.smallest()] + [space.sample(rng) for _ in range(self.n_archs)]
        dropped = {d.name: 0 for d in space.free_dimensions() if d.kind == "width" and 0 in d.choices}
        if dropped:
            archs.append(space.complete(dropped))
        try:
            for i, arch in enumerate(archs):
                supernet.set_active(arch)
                with torch.no_grad():
                    masked = supernet(**inputs).sample
                supernet.set_active(arch, mode="sliced")
                assert supernet.mode == "sliced" and supernet.active == arch
                with torch.no_grad():
                    sliced = supernet(**inputs).sample
                gap = (masked - sliced).abs().max().item()
                assert gap <= self.sliced_atol, f"arch {i}: sliced differs from masked by {gap:.2e}"
                assert supernet.sliced(arch) is supernet.sliced(arch), "sliced sub-networks are cached"
        finally:
            supernet.set_active(space.full())
        assert supernet.mode == "masked"

    def test_sliced_pass_costs_the_arch_macs(self, supernet: "ElasticUNet") -> None:
        """fvcore counts the sliced sub-network's operators at the analytic MACs of its arch:
        only the active channels and layers run."""
        from search_spaces.macs import count_unet_macs

        space = supernet.space
        archs = [space.smallest(), space.sample(np.random.default_rng(12))]
        for arch in archs:
            fv = count_unet_macs(supernet.sliced(arch), batch_size=1, encoder_seq_len=supernet.encoder_seq_len)
            macs = space.macs(arch)
            assert abs(macs - fv) <= self.macs_rtol * fv, f"sliced MACs {fv} vs analytic {macs}"
