"""The search is independent of the router by default; ``search.seed_with_router`` adds a second
search seeded with the router's allocation (the ``search_seeded`` method); both record their cost;
a no-op re-run leaves finished allocation files byte-identical and free of absolute paths."""

from __future__ import annotations

import json

from experts.allocation import Allocation
from experts.intervals import Intervals
from nas.cli import main
from nas.config import SearchConfig
from nas.run import RunDir
from nas.search import (
    RECORD_KIND,
    SyntheticObjective,
    allocation_path,
    arch_to_allocation,
    run_search,
    synthetic_mixture_space,
)
from nas.search.session import relative_storage

INTERVALS = Intervals.uniform(1000, 3)


def _records(run: RunDir, study: str | None = None) -> list[dict]:
    recs = [r for r in run.read_results() if r.get("kind") == RECORD_KIND and r["fidelity"] == "proxy"]
    return sorted([r for r in recs if study is None or r["study"] == study], key=lambda r: r["number"])


def _router_arch(space):
    return space.complete({**space.smallest(), "e1/b2.width": 32})


def _write_router(run: RunDir, space, budget: float = 0.5) -> None:
    arch_to_allocation(space, _router_arch(space), INTERVALS, budget, method="router").save(
        allocation_path(run.allocations_dir, "router", budget))


def test_the_default_search_never_evaluates_the_routers_allocation(tmp_path):
    space = synthetic_mixture_space()
    run = RunDir(tmp_path, "r")
    _write_router(run, space)
    cfg = SearchConfig(backend="local", n_trials=6, budgets=(0.5,), promote_top_k=1, skip_infeasible=False)
    run_search(space, SyntheticObjective(space), cfg, run, intervals=INTERVALS)
    recs = _records(run)
    assert [r["source"] for r in recs[:2]] == ["full", "uniform"]
    assert "router" not in {r["source"] for r in recs}
    alloc = Allocation.load(run.allocations_dir / "search-0.5.json")
    assert alloc.method == "search" and alloc.info["seeded_with_router"] is False
    assert not (run.allocations_dir / "search_seeded-0.5.json").exists()
    cost = alloc.info["cost"]  # evaluations per fidelity, wall, CPU and GPU seconds
    assert cost["evaluations"] == {"proxy": 6, "full": 1}
    assert cost["cpu_s"] >= 0 and cost["gpu_s"] == 0 and cost["wall_s"] > 0 and cost["eval_s"] >= 0
    assert all("cpu_s" in r["placement"] for r in recs)


def test_a_seeded_search_evaluates_the_routers_allocation_after_the_known_points(tmp_path):
    space = synthetic_mixture_space()
    run = RunDir(tmp_path, "r")
    _write_router(run, space)
    cfg = SearchConfig(backend="local", n_trials=6, budgets=(0.5,), promote_top_k=0, skip_infeasible=False,
                       seed_with_router=True)
    run_search(space, SyntheticObjective(space), cfg, run, intervals=INTERVALS)
    recs = _records(run)
    assert [r["source"] for r in recs[:3]] == ["full", "uniform", "router"]
    assert recs[2]["arch"] == _router_arch(space).to_dict()
    alloc = Allocation.load(run.allocations_dir / "search_seeded-0.5.json")
    assert alloc.method == "search_seeded" and alloc.info["seeded_with_router"] is True
    assert not (run.allocations_dir / "search-0.5.json").exists()


def test_the_search_command_runs_the_independent_search_and_then_the_seeded_one(tmp_path, capsys):
    space = synthetic_mixture_space()
    run = RunDir(tmp_path, "s")
    _write_router(run, space)
    args = ["search", "--synthetic", "--backend", "local", "--name", "s", "--set", f"run_root={tmp_path}",
            "--set", "search.n_trials=4", "--set", "search.budgets=[0.5]", "--set", "search.promote_top_k=0",
            "--set", "search.skip_infeasible=false"]
    assert main(args) == 0
    assert (run.allocations_dir / "search-0.5.json").exists()
    assert not (run.allocations_dir / "search_seeded-0.5.json").exists()
    assert "router" not in {r["source"] for r in _records(run, "search-b0.5")}
    assert main([*args, "--set", "search.seed_with_router=true"]) == 0
    capsys.readouterr()
    seeded = _records(run, "search-seeded-b0.5")
    assert [r["source"] for r in seeded[:3]] == ["full", "uniform", "router"]
    assert "router" not in {r["source"] for r in _records(run, "search-b0.5")}  # still independent
    assert (run.path / "search-seeded" / "summary.json").exists()
    assert Allocation.load(run.allocations_dir / "search_seeded-0.5.json").method == "search_seeded"


def test_a_seeded_search_without_a_router_allocation_is_one_line(tmp_path, capsys):
    code = main(["search", "--synthetic", "--backend", "local", "--name", "s", "--set", f"run_root={tmp_path}",
                 "--set", "search.n_trials=2", "--set", "search.seed_with_router=true"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "diffnas route" in err and "seed_with_router" in err
    assert not (tmp_path / "s" / "search").exists()  # refused before any work


def test_a_noop_rerun_leaves_the_allocation_byte_identical_without_absolute_paths(tmp_path):
    space = synthetic_mixture_space()
    run = RunDir(tmp_path, "r")
    cfg = SearchConfig(backend="local", n_trials=5, budgets=(0.5, 0.7), promote_top_k=1)
    run_search(space, SyntheticObjective(space), cfg, run, intervals=INTERVALS)
    paths = sorted(run.allocations_dir.glob("search-*.json"))
    assert len(paths) == 2
    before = {p.name: p.read_bytes() for p in paths}
    for text in [b.decode() for b in before.values()] + [(run.search_dir / "summary.json").read_text()]:
        assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text
    assert json.loads(before["search-0.5.json"])["info"]["storage"] == "sqlite:///search/study.db"
    run_search(space, SyntheticObjective(space), cfg, run, intervals=INTERVALS)  # nothing left to do
    assert {p.name: p.read_bytes() for p in paths} == before
    # more trials: the file is rewritten with the new evaluations
    run_search(space, SyntheticObjective(space), SearchConfig(**{**cfg.__dict__, "n_trials": 7}), run,
               intervals=INTERVALS)
    after = json.loads((run.allocations_dir / "search-0.5.json").read_text())
    assert after["info"]["cost"]["evaluations"]["proxy"] == 7


def test_relative_storage_keeps_urls_and_outside_paths():
    from pathlib import Path

    root = Path("/data/runs/r")
    assert relative_storage("sqlite:////data/runs/r/search/study.db", root) == "sqlite:///search/study.db"
    assert relative_storage("/data/runs/r/search/journal.log", root) == "search/journal.log"
    assert relative_storage("sqlite:////elsewhere/study.db", root) == "sqlite:////elsewhere/study.db"
    assert relative_storage("postgresql://u@host/db", root) == "postgresql://u@host/db"


def test_router_and_search_write_their_cost_in_the_same_fields(tmp_path):
    from router.output import routing_cost

    space = synthetic_mixture_space()
    run = RunDir(tmp_path, "r")
    run_search(space, SyntheticObjective(space), SearchConfig(backend="local", n_trials=4, budgets=(0.5,),
                                                              promote_top_k=1), run, intervals=INTERVALS)
    searched = Allocation.load(run.allocations_dir / "search-0.5.json").info["cost"]
    routed = routing_cost({"train_evaluations": 40, "repair_evaluations": 3, "train_seconds": 2.0,
                           "decode_seconds": 0.5, "cpu_s": 4.0, "device": "cuda:0"})
    for key in ("evaluations_per_fidelity", "wall_s", "cpu_s", "gpu_s"):
        assert key in searched and key in routed
    assert searched["evaluations_per_fidelity"] == {"proxy": 4, "full": 1}
    assert routed["evaluations_per_fidelity"] == {"proxy": 43, "fid": 0} and routed["evaluations"] == 43
    assert routed["wall_s"] == 2.5 and routed["gpu_s"] == 2.5 and routed["cpu_s"] == 4.0
