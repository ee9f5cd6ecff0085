"""The contract every search objective must pass (built-in or user-defined), as pytest test cases.

An objective joins by subclassing :class:`ObjectiveContract` in a test file of its own project
and providing two fixtures, ``objective`` and the ``space`` its architectures come from::

    import pytest
    from nas.search.testing import ObjectiveContract

    class TestMyObjective(ObjectiveContract):
        @pytest.fixture
        def space(self):
            return my_space()

        @pytest.fixture
        def objective(self, space):
            return MyObjective(space)

Then ``pytest`` runs every case below on ``MyObjective``: it is an
:class:`~nas.search.Objective`; it lists its fidelities (cheapest first); ``evaluate`` returns a
mapping with a finite ``quality`` (and, if present, a non-negative ``sampled_images``) at every
fidelity; the same arch, fidelity and context give the same result; an unknown fidelity is a
``ValueError``; and it survives the pickling that ships it to Ray workers. Each case evaluates
the full arch, the smallest one and :attr:`ObjectiveContract.n_samples` sampled archs, so keep
the objective's test configuration cheap. This module needs ``pytest`` (the ``dev`` extra);
importing :mod:`nas.search` does not import it.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping

import numpy as np
import pytest

from nas.search.allocations import arch_key
from nas.search.objective import EvalContext, Objective
from search_spaces import Arch, SearchSpace

__all__ = ["ObjectiveContract"]


class ObjectiveContract:
    """Shared cases; subclasses provide ``objective`` and ``space`` fixtures.

    Attributes:
        n_samples: sampled archs evaluated by each case, besides the full and the smallest.
        seed: the evaluation seed put in the :class:`EvalContext`.
    """

    n_samples = 2
    seed = 0

    # ------------------------------------------------------------------------------ helpers
    def archs(self, space: SearchSpace) -> list[Arch]:
        """The archs each case evaluates: full, smallest, then ``n_samples`` seeded samples."""
        rng = np.random.default_rng(0)
        return [space.full(), space.smallest()] + [space.sample(rng) for _ in range(self.n_samples)]

    def context(self, arch: Arch, fidelity: str) -> EvalContext:
        """The context of one evaluation (a local trial of study ``contract``)."""
        return EvalContext("contract", 0, arch_key(arch), fidelity, device="cpu", seed=self.seed)

    # -------------------------------------------------------------------------------- cases
    def test_is_an_objective(self, objective: Objective) -> None:
        assert isinstance(objective, Objective), "an objective needs `fidelities` and `evaluate(arch, fidelity, context)`"

    def test_fidelities_are_listed(self, objective: Objective) -> None:
        fidelities = tuple(objective.fidelities)
        assert fidelities, "list at least one fidelity, cheapest first (e.g. ('proxy', 'fid'))"
        assert all(isinstance(f, str) and f for f in fidelities), f"fidelities must be names: {fidelities!r}"
        assert len(set(fidelities)) == len(fidelities), f"fidelities repeat: {fidelities!r}"

    def test_evaluate_returns_a_finite_quality_at_every_fidelity(self, objective: Objective,
                                                                  space: SearchSpace) -> None:
        for fidelity in objective.fidelities:
            for arch in self.archs(space):
                metrics = objective.evaluate(arch, fidelity, self.context(arch, fidelity))
                _check_metrics(metrics, fidelity)

    def test_the_same_arch_gives_the_same_result(self, objective: Objective, space: SearchSpace) -> None:
        for fidelity in objective.fidelities:
            for arch in self.archs(space)[:2]:
                first = dict(objective.evaluate(arch, fidelity, self.context(arch, fidelity)))
                again = dict(objective.evaluate(Arch(arch.to_dict()), fidelity, self.context(arch, fidelity)))
                assert first["quality"] == again["quality"], (
                    f"{fidelity}: quality {first['quality']} then {again['quality']} for the same arch and seed; "
                    "use context.seed for every random draw (trials are compared on the same noise)"
                )

    def test_an_unknown_fidelity_is_a_value_error(self, objective: Objective, space: SearchSpace) -> None:
        arch = space.full()
        name = "-".join(objective.fidelities) + "-unknown"
        with pytest.raises(ValueError):
            objective.evaluate(arch, name, self.context(arch, name))

    def test_survives_pickling_for_ray_workers(self, objective: Objective, space: SearchSpace) -> None:
        try:
            import cloudpickle as shipper  # what Ray uses
        except ImportError:  # pragma: no cover - cloudpickle comes with ray
            shipper = pickle
        # round trip of bytes this test just made from the user's own object (what Ray ships to a
        # worker); no file is read
        copy = pickle.loads(shipper.dumps(objective))
        arch, fidelity = space.full(), objective.fidelities[0]
        ctx = self.context(arch, fidelity)
        assert copy.evaluate(arch, fidelity, ctx)["quality"] == objective.evaluate(arch, fidelity, ctx)["quality"]


def _check_metrics(metrics: Mapping[str, object], fidelity: str) -> None:
    """What the search needs of one evaluation's metrics (see :class:`Objective`)."""
    assert isinstance(metrics, Mapping), f"{fidelity}: evaluate must return a mapping, got {type(metrics).__name__}"
    assert "quality" in metrics, f"{fidelity}: the metrics need a 'quality' entry (lower is better)"
    quality = float(metrics["quality"])  # type: ignore[arg-type]
    assert math.isfinite(quality), f"{fidelity}: quality must be finite, got {quality}"
    assert all(isinstance(k, str) for k in metrics), f"{fidelity}: metric names must be strings"
    if "sampled_images" in metrics:
        images = float(metrics["sampled_images"])  # type: ignore[arg-type]
        assert images >= 0, f"{fidelity}: sampled_images must be >= 0, got {images}"
