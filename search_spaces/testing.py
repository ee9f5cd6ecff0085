"""The contract every SearchSpace must pass (built-in or user-defined), as pytest test cases.

A space joins by subclassing :class:`SearchSpaceContract` in a test file of its own project and
providing a ``space`` fixture, as Optuna's samplers join their shared test cases::

    import pytest
    from search_spaces.testing import SearchSpaceContract

    class TestMySpace(SearchSpaceContract):
        @pytest.fixture
        def space(self):
            return MySpace()

Then ``pytest`` runs every case below on ``MySpace``. This module needs ``pytest`` (the
``dev`` extra); importing :mod:`search_spaces` does not import it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from search_spaces import Arch, SearchSpace

__all__ = ["SearchSpaceContract"]


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
