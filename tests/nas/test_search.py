"""The Optuna search without Ray (the local backend): modes, samplers, known points, duplicates,
multi-fidelity promotion, the exactly-once ledger and resume, outputs, CLI."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from experts.allocation import Allocation
from experts.intervals import Intervals
from nas.cli import main
from nas.config import SearchConfig, load_config
from nas.errors import UserError
from nas.run import RunDir
from nas.search import (
    RECORD_KIND,
    SearchSession,
    SyntheticObjective,
    TrialOutcome,
    allocation_path,
    allocation_to_arch,
    arch_key,
    arch_to_allocation,
    known_points,
    run_search,
    synthetic_mixture_space,
    uniform_width_arch,
)
from search_spaces import Arch, Dimension, ProductSpace, SimpleSpace

INTERVALS = Intervals(1000, (300, 700))


def _space() -> ProductSpace:
    return synthetic_mixture_space(num_experts=3, blocks=3)


def _cfg(**kw) -> SearchConfig:
    base = dict(backend="local", n_trials=8, budgets=(0.5,), sampler="tpe", promote_top_k=0)
    base.update(kw)
    return SearchConfig(**base)


def _records(run: RunDir, fidelity: str | None = "proxy") -> list[dict]:
    return [r for r in run.read_results()
            if r.get("kind") == RECORD_KIND and (fidelity is None or r["fidelity"] == fidelity)]


def _starts(log: Path) -> collections.Counter:
    if not log.exists():
        return collections.Counter()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return collections.Counter((e["key"], e["fidelity"]) for e in events if e["event"] == "start")


def _load_study(run: RunDir, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run.search_dir / 'study.db'}")


# ----------------------------------------------------------------------------------- helpers


def test_uniform_width_arch_is_the_widest_uniform_arch_within_the_budget():
    space = _space()
    for budget in (0.3, 0.5, 0.8):
        arch = uniform_width_arch(space, budget)
        assert arch is not None and space.macs_ratio(arch) <= budget
        widths = {v for k, v in arch.items() if k.endswith(".width")}
        assert len(widths) == 1  # uniform
        assert all(v is True for k, v in arch.items() if k.endswith(".depth"))  # depth kept
        wider = [w for w in (8, 16, 24, 32) if w > next(iter(widths))]
        if wider:  # the next uniform level would break the budget
            up = space.complete({k: (wider[0] if k.endswith(".width") else v) for k, v in arch.items()})
            assert space.macs_ratio(up) > budget
    assert uniform_width_arch(space, 0.01) is None


def test_allocation_round_trip_and_trajectory_macs():
    space = _space()
    arch = space.sample(np.random.default_rng(0))
    alloc = arch_to_allocation(space, arch, INTERVALS, 0.5, info={"x": 1})
    assert alloc.trajectory_macs == space.macs(arch)
    assert alloc.base_trajectory_macs == space.macs(space.full())
    assert list(alloc.steps_per_expert) == [int(w) for w in space.weights.values()]
    assert allocation_to_arch(space, Allocation.from_json(alloc.to_json())) == arch


def test_known_points_include_a_router_allocation_when_its_file_exists(tmp_path):
    space = _space()
    assert [n for n, _ in known_points(space, 0.5, tmp_path)] == ["full", "uniform"]
    router_arch = space.smallest()
    arch_to_allocation(space, router_arch, INTERVALS, 0.5, method="router").save(
        allocation_path(tmp_path, "router", 0.5))
    points = dict(known_points(space, 0.5, tmp_path))
    assert points["router"] == router_arch


def test_search_config_validation_names_the_key():
    with pytest.raises(UserError, match="search.gpus_per_trial"):
        load_config(None, ["search.gpus_per_trial=1.5"])
    with pytest.raises(UserError, match="search.budgets"):
        load_config(None, ["search.budgets=[0.5, 1.5]"])
    with pytest.raises(UserError, match="search.sampler"):
        load_config(None, ["search.sampler=cmaes"])


# ------------------------------------------------------------------------------ the search


def test_trials_are_categorical_choice_indices_of_free_dimensions_completed_and_repaired(tmp_path):
    dims = [
        Dimension("down.width", (4, 8, 12)),
        Dimension("up.width", (4, 8, 12), tied_to="down.width", rule="up consumes down's skip"),
        Dimension("mid.width", (4, 8)),
        Dimension("fixed.width", (8,)),
    ]
    space = SimpleSpace(dims, macs_fn=lambda a: a["down.width"] * 10 + a["up.width"] * 10 + a["mid.width"] * 5)
    run = RunDir(tmp_path, "r")
    run_search(space, SyntheticObjective(space), _cfg(n_trials=5, sampler="random"), run)
    study = _load_study(run, "search-b0.5")
    for t in study.trials:
        assert set(t.params) == {"down.width", "mid.width"}  # tied and single-choice dims are not suggested
        assert all(isinstance(v, int) for v in t.params.values())
        for name, dist in t.distributions.items():
            assert isinstance(dist, optuna.distributions.CategoricalDistribution)
            assert list(dist.choices) == list(range(len(space.dimension(name).choices)))
        arch = Arch(t.user_attrs["diffnas_arch"])
        space.validate(arch)
        assert arch["up.width"] == arch["down.width"] == space.dimension("down.width").choices[t.params["down.width"]]


def test_constrained_search_keeps_infeasible_trials_apart_and_beats_uniform(tmp_path):
    space = _space()
    run = RunDir(tmp_path, "r")
    res = run_search(space, SyntheticObjective(space), _cfg(n_trials=20, sampler="tpe", skip_infeasible=False), run,
                     intervals=INTERVALS)
    recs = _records(run)
    assert len(recs) == 20 and len({r["key"] for r in recs}) == 20
    infeasible = [r for r in recs if not r["feasible"]]
    assert infeasible, "the enqueued full arch is over the budget"
    assert all(r["macs_ratio"] > 0.5 for r in infeasible)
    assert all(r["macs_ratio"] <= 0.5 + 1e-9 for r in recs if r["feasible"])
    # Optuna knows the constraint of every trial (set before evaluation)
    study = _load_study(run, "search-b0.5")
    for t in study.trials:
        (c,) = t.constraints.values()
        assert (c <= 0) == t.user_attrs["diffnas_feasible"]
    # the best and the front are feasible; the uniform arch (enqueued) is beaten
    best = res.studies[0].best[0.5]
    assert best["feasible"] and best["macs_ratio"] <= 0.5
    uniform = next(r for r in recs if r["source"] == "uniform")
    assert best["quality"] < uniform["quality"]
    front = json.loads((run.search_dir / "pareto-search-b0.5.json").read_text())["points"]
    assert front and all(p["feasible"] and p["macs_ratio"] <= 0.5 for p in front)
    alloc = Allocation.load(run.allocations_dir / "search-0.5.json")
    assert alloc.feasible and alloc.method == "search" and alloc.info["key"] == best["key"]
    assert allocation_to_arch(space, alloc) == Arch(best["arch"])
    rows = list(csv.DictReader(open(run.search_dir / "trials.csv")))
    assert {r["feasible"] for r in rows} == {"True", "False"}


def test_multi_objective_front_is_optuna_best_trials(tmp_path):
    space = _space()
    run = RunDir(tmp_path, "r")
    res = run_search(space, SyntheticObjective(space),
                     _cfg(mode="multi_objective", budgets=(0.3, 0.6), n_trials=14, sampler="nsga2"), run,
                     intervals=INTERVALS)
    (study_res,) = res.studies
    study = _load_study(run, "search-mo")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    best_keys = {t.user_attrs["diffnas_key"] for t in study.best_trials}
    points = json.loads((run.search_dir / "pareto-search-mo.json").read_text())["points"]
    assert {p["key"] for p in points} == best_keys
    for p in points:  # non-dominated among all evaluated
        for r in _records(run):
            assert not (r["quality"] <= p["quality"] and r["macs_ratio"] <= p["macs_ratio"]
                        and (r["quality"] < p["quality"] or r["macs_ratio"] < p["macs_ratio"]))
    for b in (0.3, 0.6):
        alloc = Allocation.load(run.allocations_dir / f"search-{b:g}.json")
        assert alloc.achieved_ratio <= b + 1e-9
        assert study_res.best[b]["key"] == alloc.info["key"]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_runs_seeded_and_reproducible(tmp_path, sampler):
    space = synthetic_mixture_space(num_experts=2, blocks=2)
    keys = []
    for name in ("a", "b"):
        run = RunDir(tmp_path, name)
        run_search(space, SyntheticObjective(space), _cfg(n_trials=6, sampler=sampler, seed=3), run)
        keys.append([r["key"] for r in _records(run)])
    assert len(keys[0]) == 6 and len(set(keys[0])) == 6
    assert keys[0] == keys[1]  # same seed, same sequence (local backend is sequential)


def test_known_points_are_evaluated_first(tmp_path):
    space = _space()
    run = RunDir(tmp_path, "r")
    router_arch = space.complete({**space.smallest(), "e1/b2.width": 32})
    arch_to_allocation(space, router_arch, INTERVALS, 0.5, method="router").save(
        allocation_path(run.allocations_dir, "router", 0.5))
    run_search(space, SyntheticObjective(space), _cfg(n_trials=5, skip_infeasible=False), run)
    recs = sorted(_records(run), key=lambda r: r["number"])
    # independent by default: the full and uniform points first; the router's allocation is not the
    # search's to see
    assert [r["source"] for r in recs[:2]] == ["full", "uniform"]
    assert {r["source"] for r in recs[2:]} <= {"sampler", "shrunk"}
    seeded = RunDir(tmp_path, "s")
    arch_to_allocation(space, router_arch, INTERVALS, 0.5, method="router").save(
        allocation_path(seeded.allocations_dir, "router", 0.5))
    run_search(space, SyntheticObjective(space), _cfg(n_trials=5, skip_infeasible=False, seed_with_router=True),
               seeded)
    recs = sorted(_records(seeded), key=lambda r: r["number"])
    assert [r["source"] for r in recs[:3]] == ["full", "uniform", "router"] and Arch(recs[2]["arch"]) == router_arch


def test_the_allocation_records_where_its_best_arch_came_from(tmp_path):
    space = _space()
    run = RunDir(tmp_path, "r")
    router_arch = space.complete({**space.smallest(), "e1/b2.width": 32})
    arch_to_allocation(space, router_arch, INTERVALS, 0.5, method="router").save(
        allocation_path(run.allocations_dir, "router", 0.5))
    run_search(space, SyntheticObjective(space), _cfg(n_trials=6, seed_with_router=True), run, intervals=INTERVALS)
    alloc = Allocation.load(run.allocations_dir / "search_seeded-0.5.json")
    rec = next(r for r in _records(run) if r["key"] == alloc.info["key"])
    assert alloc.info["source"] == rec["source"] and alloc.method == "search_seeded"
    assert {r["source"] for r in _records(run)} >= {"router"}


def test_proposals_of_evaluated_archs_are_answered_without_evaluating(tmp_path):
    space = SimpleSpace([Dimension("a", (1, 2)), Dimension("b", (1, 2))], macs_fn=lambda x: x["a"] + x["b"])
    run = RunDir(tmp_path, "r")
    log = tmp_path / "evals.jsonl"
    cfg = _cfg(n_trials=6, sampler="random", budgets=(1.0,), max_duplicate_proposals=30)
    res = run_search(space, SyntheticObjective(space, log_path=str(log)), cfg, run)
    (s,) = res.studies
    assert s.n_evaluated == 4  # the space has 4 archs; the study stops early instead of re-evaluating
    assert s.counts["duplicates"] > 0
    assert set(_starts(log).values()) == {1}
    study = _load_study(run, "search-b1")
    dups = [t for t in study.trials if "diffnas_duplicate_of" in t.user_attrs]
    assert len(dups) == s.counts["duplicates"]
    for t in dups:  # told the stored value of the original
        orig = study.trials[t.user_attrs["diffnas_duplicate_of"]]
        assert t.values == orig.values and t.user_attrs["diffnas_key"] == orig.user_attrs["diffnas_key"]


@pytest.mark.parametrize("sampler, skip", [("random", True), ("tpe", None)])
def test_skip_infeasible_evaluates_only_feasible_archs(tmp_path, sampler, skip):
    space = _space()
    run = RunDir(tmp_path, "r")
    res = run_search(space, SyntheticObjective(space), _cfg(n_trials=6, skip_infeasible=skip, sampler=sampler), run)
    assert all(r["feasible"] for r in _records(run)) and len(_records(run)) == 6
    assert res.studies[0].counts["skipped_infeasible"] >= 1  # at least the full arch
    study = _load_study(run, "search-b0.5")
    skipped = [t for t in study.trials if t.user_attrs.get("diffnas_state") == "skipped_infeasible"]
    assert skipped and all(t.state == optuna.trial.TrialState.PRUNED for t in skipped)


def test_a_failing_trial_is_retried_then_failed_and_the_study_goes_on(tmp_path):
    space = _space()
    run = RunDir(tmp_path, "r")
    bad = arch_key(space.full())
    log = tmp_path / "evals.jsonl"
    res = run_search(space, SyntheticObjective(space, fail_keys=(bad,), log_path=str(log)),
                     _cfg(n_trials=5, max_failures=2, skip_infeasible=False), run)
    recs = _records(run)
    failed = [r for r in recs if r["state"] == "failed"]
    assert [r["key"] for r in failed] == [bad]
    assert failed[0]["attempts"] == 3 and "synthetic failure" in failed[0]["error"]
    assert _starts(log)[(bad, "proxy")] == 3
    assert res.studies[0].n_evaluated == 5 and res.studies[0].n_failed == 1
    study = _load_study(run, "search-b0.5")
    state = {t.user_attrs["diffnas_key"]: t.state for t in study.trials}
    assert state[bad] == optuna.trial.TrialState.FAIL
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in state.values()) == 4


def test_promotion_evaluates_the_top_k_feasible_at_the_expensive_fidelity_once(tmp_path):
    space = _space()
    run = RunDir(tmp_path, "r")
    log = tmp_path / "evals.jsonl"
    obj = SyntheticObjective(space, log_path=str(log))
    res = run_search(space, obj, _cfg(n_trials=10, promote_top_k=3), run, intervals=INTERVALS)
    proxy, full = _records(run), _records(run, "full")
    top3 = sorted((r for r in proxy if r["feasible"]), key=lambda r: r["quality"])[:3]
    # the promoted archs are the three best feasible by proxy quality (ties may go either way)
    proxy_quality = {r["key"]: r["quality"] for r in proxy}
    assert len(full) == 3
    assert sorted(proxy_quality[r["key"]] for r in full) == [r["quality"] for r in top3]
    best = res.studies[0].best[0.5]
    assert best["selected_by"] == "full"
    assert best["quality_full"] == min(r["quality"] for r in full)
    alloc = Allocation.load(run.allocations_dir / "search-0.5.json")
    assert alloc.info["quality_full"] == best["quality_full"]
    # re-running the finished search evaluates nothing
    run_search(space, obj, _cfg(n_trials=10, promote_top_k=3), run, intervals=INTERVALS)
    assert len(_records(run, None)) == 13 and set(_starts(log).values()) == {1}


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_rerun_with_more_trials_continues_the_study(tmp_path, storage):
    space = _space()
    run = RunDir(tmp_path, "r")
    log = tmp_path / "evals.jsonl"
    obj = SyntheticObjective(space, log_path=str(log))
    run_search(space, obj, _cfg(n_trials=4, storage=storage), run)
    first = {r["key"] for r in _records(run)}
    res = run_search(space, obj, _cfg(n_trials=9, storage=storage), run)
    keys = [r["key"] for r in _records(run)]
    assert len(keys) == 9 and len(set(keys)) == 9 and first <= set(keys)
    assert set(_starts(log).values()) == {1}  # nothing evaluated twice
    assert res.studies[0].n_evaluated == 9
    assert (run.search_dir / ("study.db" if storage == "sqlite" else "journal.log")).exists()


def test_a_driver_killed_between_commit_and_tell_or_mid_trial_is_reconciled(tmp_path):
    """Simulates the two kill points: trial A committed to results.jsonl but not told to Optuna,
    trial B asked but not committed. The re-run tells A from the ledger (no re-evaluation),
    marks B interrupted and evaluates its architecture exactly once."""
    space = _space()
    run = RunDir(tmp_path, "r")
    log = tmp_path / "evals.jsonl"
    obj = SyntheticObjective(space, log_path=str(log))
    cfg = _cfg(n_trials=6, enqueue_known=False, sampler="random", skip_infeasible=False)
    with SearchSession(space, obj, cfg, run) as session:
        (drv,) = session.drivers
        trial_a, pa = drv.next_proposal()
        trial_b, pb = drv.next_proposal()
        drv.commit(pa, TrialOutcome({"quality": 0.25}, eval_s=0.1))  # ... and the driver dies here
    study = _load_study(run, "search-b0.5")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING] * 2
    res = run_search(space, obj, cfg, run)
    study = _load_study(run, "search-b0.5")
    ta, tb = study.trials[pa.number], study.trials[pb.number]
    assert ta.state == optuna.trial.TrialState.COMPLETE and ta.values == [0.25]
    assert tb.state == optuna.trial.TrialState.FAIL and tb.user_attrs["diffnas_state"] == "interrupted"
    retry = [t for t in study.trials if t.user_attrs.get("diffnas_retry_of") == pb.number]
    assert len(retry) == 1 and retry[0].user_attrs["diffnas_key"] == pb.key
    assert retry[0].state == optuna.trial.TrialState.COMPLETE
    keys = [r["key"] for r in _records(run)]
    assert len(keys) == 6 and len(set(keys)) == 6 and {pa.key, pb.key} <= set(keys)
    starts = _starts(log)
    assert starts[(pa.key, "proxy")] == 0  # committed result kept, never recomputed
    assert starts[(pb.key, "proxy")] == 1
    assert res.studies[0].counts["recovered"] == 1 and res.studies[0].counts["interrupted"] == 1
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_a_driver_killed_after_asking_an_over_budget_trial_prunes_it_on_rerun(tmp_path):
    """The kill lands after the proposal was found over the budget (its attributes are set) but
    before Optuna was told it is pruned: the re-run settles it as skipped (never re-queues it, so
    it is never evaluated) and queues its shrunk arch, as the live driver would have."""
    space = _space()
    run = RunDir(tmp_path, "r")
    log = tmp_path / "evals.jsonl"
    obj = SyntheticObjective(space, log_path=str(log))
    cfg = _cfg(n_trials=3, enqueue_known=False, sampler="random", budgets=(0.3,))
    with SearchSession(space, obj, cfg, run) as session:
        (drv,) = session.drivers
        for _ in range(50):  # draw until a proposal is over the budget, then "die" before telling it
            trial = drv.study.ask(drv.distributions)
            p = drv.proposal_from_trial(trial)
            if not p.feasible:
                break
            drv.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        assert not p.feasible
    res = run_search(space, obj, cfg, run)
    study = _load_study(run, "search-b0.3")
    t = study.trials[p.number]
    assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["diffnas_state"] == "skipped_infeasible"
    assert not [x for x in study.trials if x.user_attrs.get("diffnas_retry_of") == p.number]
    assert not [x for x in study.trials if x.user_attrs.get("diffnas_state") == "interrupted"]
    assert _starts(log)[(p.key, "proxy")] == 0
    shrunk = [x for x in study.trials if x.user_attrs.get("diffnas_source") == "shrunk"]
    assert shrunk and shrunk[0].number == p.number + 1  # its shrunk arch was the next proposal
    assert shrunk[0].user_attrs["diffnas_macs_ratio"] <= 0.3 + 1e-9
    assert res.studies[0].counts["skipped_infeasible"] >= 1 and res.studies[0].counts["interrupted"] == 0


def test_a_second_driver_on_the_same_search_is_refused(tmp_path):
    space = _space()
    run = RunDir(tmp_path, "r")
    with SearchSession(space, SyntheticObjective(space), _cfg(), run):
        with pytest.raises(UserError, match="another search is running"):
            run_search(space, SyntheticObjective(space), _cfg(), run)


def test_a_stored_study_of_another_space_is_refused(tmp_path):
    run = RunDir(tmp_path, "r")
    run_search(_space(), SyntheticObjective(_space()), _cfg(n_trials=2), run)
    other = synthetic_mixture_space(num_experts=2)
    with pytest.raises(UserError, match="another search space"):
        run_search(other, SyntheticObjective(other), _cfg(n_trials=2), run)


def test_outputs_record_the_search_cost_and_every_trial(tmp_path):
    space = _space()
    run = RunDir(tmp_path, "r")
    run_search(space, SyntheticObjective(space), _cfg(n_trials=6, budgets=(0.4, 0.6), promote_top_k=1), run,
               intervals=INTERVALS)
    summary = json.loads((run.search_dir / "summary.json").read_text())
    assert [s["name"] for s in summary["studies"]] == ["search-b0.4", "search-b0.6"]
    for s in summary["studies"]:
        assert s["cost"]["evaluations"] == {"proxy": 6, "full": 1}
        assert s["cost"]["eval_s"] > 0 and "sampled_images" in s["cost"]
    assert summary["wall_s_session"] > 0 and summary["storage"].startswith("sqlite:///")
    rows = [json.loads(line) for line in (run.search_dir / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == len(list(csv.DictReader(open(run.search_dir / "trials.csv"))))
    assert {r["study"] for r in rows} == {"search-b0.4", "search-b0.6"}
    for b in (0.4, 0.6):
        assert Allocation.load(run.allocations_dir / f"search-{b:g}.json").info["search_cost"]["trials"] == 6


# ------------------------------------------------------------------------------------- CLI


def test_cli_search_synthetic_local(tmp_path, capsys):
    code = main(["search", "--synthetic", "--backend", "local", "--name", "s", "--set", f"run_root={tmp_path}",
                 "--set", "search.n_trials=5", "--set", "search.budgets=[0.4, 0.7]"])
    out = capsys.readouterr().out
    assert code == 0
    assert "study search-b0.4: 5 evaluated" in out and "allocation 0.7:" in out
    assert (tmp_path / "s" / "allocations" / "search-0.4.json").exists()
    assert (tmp_path / "s" / "search" / "synthetic-evals.jsonl").exists()


def test_cli_search_without_a_model_is_a_one_line_error(tmp_path, capsys):
    code = main(["search", "--backend", "local", "--set", f"run_root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "diffnas: error:" in err and "--synthetic" in err


def test_skip_infeasible_defaults_by_sampler():
    from nas.search import StudyDriver, study_specs

    space = _space()
    for sampler, expected in (("tpe", True), ("random", True), ("gp", False), ("nsga2", False)):
        cfg = _cfg(sampler=sampler)
        drv = StudyDriver(space, study_specs(cfg)[0], cfg, None, None, ("proxy",))
        assert drv.skip_infeasible is expected
    cfg = _cfg(sampler="gp", skip_infeasible=True)
    assert StudyDriver(space, study_specs(cfg)[0], cfg, None, None, ("proxy",)).skip_infeasible


def test_a_budget_below_the_smallest_arch_is_reported(tmp_path, capsys):
    code = main(["search", "--synthetic", "--backend", "local", "--name", "s", "--set", f"run_root={tmp_path}",
                 "--set", "search.n_trials=3", "--set", "search.budgets=[0.05]"])
    out = capsys.readouterr().out
    assert code == 0
    assert "budget 0.05: no feasible architecture evaluated (the smallest architecture needs" in out
    assert not (tmp_path / "s" / "allocations" / "search-0.05.json").exists()


def test_cli_with_router_needs_the_route_command_and_ray(tmp_path, capsys):
    from nas.commands import all_commands

    code = main(["search", "--synthetic", "--backend", "local", "--with-router", "--set", f"run_root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert ("needs search.backend=ray" in err) if "route" in all_commands() else ("`diffnas route`" in err)
    assert not (tmp_path / "default" / "search").exists()


def test_tight_budget_is_explored_by_shrinking_infeasible_proposals(tmp_path):
    """At a budget where TPE's proposals mostly land over it, every skipped proposal is shrunk
    to the budget and evaluated: the study fills its trials with distinct feasible archs; with
    shrinking off it evaluates fewer (only what the sampler happened to put under the budget)."""
    space = _space()
    budget = 0.3
    res_on = run_search(space, SyntheticObjective(space), _cfg(n_trials=8, budgets=(budget,), enqueue_known=False,
                                                              max_duplicate_proposals=20), RunDir(tmp_path, "on"))
    on = _records(RunDir(tmp_path, "on"))
    assert len(on) == 8 and len({r["key"] for r in on}) == 8
    assert all(r["feasible"] and r["macs_ratio"] <= budget + 1e-9 for r in on)
    assert sum(r.get("source") == "shrunk" for r in on) >= 4
    assert res_on.studies[0].best[budget]["macs_ratio"] <= budget
    run_search(space, SyntheticObjective(space), _cfg(n_trials=8, budgets=(budget,), enqueue_known=False,
                                                      max_duplicate_proposals=20, shrink_infeasible=False),
               RunDir(tmp_path, "off"))
    off = _records(RunDir(tmp_path, "off"))
    assert len(off) < len(on)


def test_shrink_to_budget_keeps_the_pattern_and_meets_the_budget():
    import numpy as np

    from nas.search.allocations import shrink_to_budget

    space = _space()
    full_macs = space.macs(space.full())
    rng = np.random.default_rng(0)
    for _ in range(10):
        arch = space.sample(rng)
        small = shrink_to_budget(space, arch, 0.3 * full_macs, rng)
        assert small is not None and space.macs(small) <= 0.3 * full_macs
        space.validate(small)
        # only steps down: every choice is at most the proposal's
        for d in space.free_dimensions():
            assert d.index(small[d.name]) <= d.index(arch[d.name])
    assert shrink_to_budget(space, space.full(), 0.0, rng) is None


def test_objective_hooks_choose_known_points_reference_and_router(tmp_path):
    """An objective may name its own known points and budget reference, and keep the router's
    allocation out (the steps-only baseline must not depend on it)."""
    import dataclasses

    from nas.search import SearchSession, SyntheticObjective, arch_to_allocation, synthetic_mixture_space

    space = synthetic_mixture_space(num_experts=2, steps=(3, 1))
    iv = Intervals(1000, (500,))
    run = RunDir(tmp_path, "hooks")
    router = space.smallest()
    arch_to_allocation(space, router, iv, 0.5, "router").save(run.allocations_dir / "router-0.5.json")

    @dataclasses.dataclass(frozen=True)
    class Hooked(SyntheticObjective):
        enqueue_router: bool = True
        reference_macs: int = 0

        def known_points(self, budget_ratio):
            return [("mine", space.full())]

    cfg = SearchConfig(budgets=(0.5,), seed_with_router=True)
    independent = SearchSession(space, SyntheticObjective(space), SearchConfig(budgets=(0.5,)), run, iv)
    assert [n for n, _ in independent._known_points(0.5)] == ["full", "uniform"]
    plain = SearchSession(space, SyntheticObjective(space), cfg, run, iv)
    assert [n for n, _ in plain._known_points(0.5)] == ["full", "uniform", "router"] and plain.reference_macs is None
    assert [n for n, _ in SearchSession(space, Hooked(space), cfg, run, iv)._known_points(0.5)] == ["mine", "router"]
    no_router = SearchSession(space, Hooked(space, enqueue_router=False, reference_macs=7), cfg, run, iv)
    assert [n for n, _ in no_router._known_points(0.5)] == ["mine"] and no_router.reference_macs == 7


def test_shrink_to_budget_lowers_what_costs_and_never_moves_a_spacing():
    """On a steps x widths joint space, the shrink draws each step down by the MACs it saves (times
    the dimension's size): a timestep spacing (which saves nothing) is never changed, and the
    step counts (a whole network call each) go down before the widths. A uniform draw over the
    dimensions changed 30 spacings in these 20 shrinks and kept 0.70 of the widths."""
    import numpy as np

    from experts.intervals import Intervals
    from experts.steps_space import joint_space
    from nas.search.allocations import shrink_to_budget
    from nas.search.objective import _LinearMacs

    expert = SimpleSpace([Dimension("b0.width", (8, 16, 24, 32)), Dimension("b1.width", (8, 16, 24, 32))],
                         macs_fn=_LinearMacs((("b0.width", 100.0), ("b1.width", 200.0)), base=320.0))
    space = joint_space(Intervals(1000, (300, 700)), [expert] * 3, [(1, 2, 4, 8), (0, 2, 4, 8), (0, 2, 4, 8)],
                        spacings=("uniform", "quadratic", "leading"))
    widths = [n for n in space.free_names() if n.endswith(".width")]
    kept = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        arch = space.sample(rng)
        small = shrink_to_budget(space, arch, 0.25 * space.macs(arch), rng)
        assert small is not None and space.macs(small) <= 0.25 * space.macs(arch)
        assert all(small[n] == arch[n] for n in space.free_names() if n.endswith("/spacing"))
        kept.append(np.mean([small[n] / arch[n] for n in widths]))
    assert np.mean(kept) > 0.85
