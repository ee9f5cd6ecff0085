"""The objective contract suite (:mod:`nas.search.testing`) on the built-in objective, and from
a project outside the repository, where it passes a good objective and fails a bad one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from nas.search import SyntheticObjective, synthetic_mixture_space
from nas.search.testing import ObjectiveContract
from search_spaces import Dimension, SimpleSpace


class TestSyntheticObjectiveOnAMixture(ObjectiveContract):
    @pytest.fixture
    def space(self):
        return synthetic_mixture_space(num_experts=2, blocks=2)

    @pytest.fixture
    def objective(self, space):
        return SyntheticObjective(space)


class TestSyntheticObjectiveWithOneFidelity(ObjectiveContract):
    n_samples = 5

    @pytest.fixture
    def space(self):
        return SimpleSpace([Dimension("w", (8, 16, 24)), Dimension("d", (False, True), kind="depth")],
                           macs_fn=_macs)

    @pytest.fixture
    def objective(self, space):
        return SyntheticObjective(space, fidelities=("proxy",))


def _macs(arch):
    return arch["w"] * (2 if arch["d"] else 1)


USER_TESTS = '''
import pytest
from nas.search import SyntheticObjective
from nas.search.testing import ObjectiveContract
from search_spaces import Dimension, SimpleSpace


def macs(arch):
    return arch["w"]


class Sloppy:
    """Ignores the fidelity it is asked for and draws unseeded noise."""

    fidelities = ("proxy", "fid")

    def __init__(self, space):
        self.space = space

    def evaluate(self, arch, fidelity, context):
        import random
        return {"quality": random.random()}


@pytest.fixture
def space():
    return SimpleSpace([Dimension("w", (1, 2, 3))], macs_fn=macs)


class TestGood(ObjectiveContract):
    @pytest.fixture
    def objective(self, space):
        return SyntheticObjective(space)


class TestSloppy(ObjectiveContract):
    @pytest.fixture
    def objective(self, space):
        return Sloppy(space)
'''


def test_the_suite_runs_in_a_users_project_and_fails_a_bad_objective(tmp_path):
    (tmp_path / "test_my_objective.py").write_text(textwrap.dedent(USER_TESTS))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "test_my_objective.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    failed = sorted(line.split("::")[-1].split(" ")[0] for line in out.splitlines() if line.startswith("FAILED"))
    assert failed == [
        "test_an_unknown_fidelity_is_a_value_error",
        "test_survives_pickling_for_ray_workers",
        "test_the_same_arch_gives_the_same_result",
    ], out
    assert "FAILED test_my_objective.py::TestGood" not in out
    assert "3 failed, 9 passed" in out, out
