"""The search's backend seam: backends by name, a user's backend, and Ray imported only when chosen."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nas.config import SearchConfig
from nas.errors import UserError
from nas.run import RunDir
from nas.search import (
    LocalBackend,
    SearchRequest,
    SyntheticObjective,
    backend_names,
    get_backend,
    register_backend,
    run_search,
    synthetic_mixture_space,
)
from nas.search import backends as backends_module


@pytest.fixture
def restore_registry(monkeypatch):
    monkeypatch.setattr(backends_module, "_BACKENDS", dict(backends_module._BACKENDS))


class CountingBackend:
    """A user's backend: the local one, counting its calls."""

    def __init__(self) -> None:
        self.requests: list[SearchRequest] = []

    def run(self, request: SearchRequest):
        self.requests.append(request)
        return LocalBackend().run(request)


def test_a_registered_backend_runs_the_search(tmp_path, restore_registry):
    backend = CountingBackend()
    register_backend("counting", backend)
    assert "counting" in backend_names()
    space = synthetic_mixture_space(num_experts=2, blocks=2)
    cfg = SearchConfig(backend="counting", n_trials=3, promote_top_k=0, budgets=(0.6,))
    result = run_search(space, SyntheticObjective(space), cfg, RunDir(tmp_path, "r"), seed=5)
    (request,) = backend.requests
    assert (request.config, request.seed, request.device, dict(request.side_jobs)) == (cfg, 5, "cpu", {})
    assert result.studies[0].n_evaluated == 3


def test_a_backend_registered_by_path_is_imported_on_first_use(restore_registry):
    register_backend("by-path", "tests.nas.test_search_backends:CountingBackend")
    assert isinstance(get_backend("by-path"), CountingBackend)
    assert get_backend("by-path") is get_backend("by-path")


def test_bad_backends_are_refused(restore_registry):
    with pytest.raises(UserError, match="unknown search backend 'nope'; registered: local, ray"):
        get_backend("nope")
    with pytest.raises(TypeError, match="run"):
        register_backend("x", object())
    with pytest.raises(ValueError, match="module:attribute"):
        register_backend("x", "just.a.module")


def test_the_local_backend_refuses_side_jobs(tmp_path):
    space = synthetic_mixture_space(num_experts=2, blocks=2)
    cfg = SearchConfig(backend="local", n_trials=2, promote_top_k=0, budgets=(0.6,))
    with pytest.raises(UserError, match="side jobs"):
        run_search(space, SyntheticObjective(space), cfg, RunDir(tmp_path, "r"), side_jobs={"router": object()})
    assert not (tmp_path / "r" / "search").exists()  # refused before the session opened anything


def test_a_local_search_never_imports_ray(tmp_path):
    code = (
        "import sys, tempfile\n"
        "from nas.config import SearchConfig\n"
        "from nas.run import RunDir\n"
        "from nas.search import SyntheticObjective, run_search, synthetic_mixture_space\n"
        "space = synthetic_mixture_space(num_experts=2, blocks=2)\n"
        "cfg = SearchConfig(backend='local', n_trials=2, promote_top_k=0, budgets=(0.6,))\n"
        "run_search(space, SyntheticObjective(space), cfg, RunDir(tempfile.mkdtemp(), 'r'))\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'nas.ray_backend'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
