"""``diffnas run``: stage order, skipping up-to-date stages, loud failure of a missing stage, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas import pipeline
from nas.config import load_config
from nas.errors import UserError
from nas.pipeline import STAGE_NAMES, Stage, run_pipeline, stage_key


def test_stage_keys_follow_the_sections_each_stage_reads():
    a = load_config(None, [])
    assert stage_key(a, "base") == stage_key(load_config(None, ["bench.num_samples=10", "search.n_trials=3"]), "base")
    assert stage_key(a, "base") != stage_key(load_config(None, ["model.train_steps=10"]), "base")
    # a change upstream changes every later stage's key
    b = load_config(None, ["intervals.grid_size=8"])
    assert stage_key(a, "base") == stage_key(b, "base")
    assert all(stage_key(a, s) != stage_key(b, s) for s in STAGE_NAMES[1:])
    c = load_config(None, ["search.n_trials=3"])
    assert stage_key(a, "router") == stage_key(c, "router") and stage_key(a, "search") != stage_key(c, "search")
    with pytest.raises(ValueError):
        stage_key(a, "nope")


def test_a_missing_stage_fails_loudly():
    cfg = load_config(None, [])
    stage = Stage("router", "x", (), "no-such-command", "the router package (issue 5: `diffnas route`)")
    with pytest.raises(UserError, match=r"needs the router package \(issue 5.*--skip router"):
        pipeline._run_command(cfg, stage)


def test_missing_stages_are_reported_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "STAGES", (
        Stage("base", "x", ("seed",)),
        Stage("router", "x", ("sampling",), "no-such-route", "the router package (issue 5: `diffnas route`)"),
    ))
    monkeypatch.setattr(pipeline, "STAGE_NAMES", ("base", "router"))
    calls = []
    monkeypatch.setattr(pipeline, "_run_stage", lambda stage, *a: calls.append(stage.name) or "ran")
    with pytest.raises(UserError, match=r"'router' needs the router package.*--skip router"):
        run_pipeline(load_config(None, [f"run_root={tmp_path}"]), progress=False)
    assert calls == []  # failed before the base stage
    run_pipeline(load_config(None, [f"run_root={tmp_path}"]), progress=False, skip=["router"])
    assert calls == ["base"]


def _fake_stages(monkeypatch, calls):
    def fake(stage, cfg, run, device, progress):
        calls.append(stage.name)
        for p in pipeline._outputs(cfg, run, stage.name):
            if p.suffix:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("{}")
            else:
                p.mkdir(parents=True, exist_ok=True)
        return "fake"

    monkeypatch.setattr(pipeline, "_run_stage", fake)
    monkeypatch.setattr(pipeline, "_check_available", lambda stages: None)  # order only, whatever is registered


def test_pipeline_runs_in_order_and_skips_up_to_date_stages(tmp_path, monkeypatch):
    calls: list[str] = []
    _fake_stages(monkeypatch, calls)
    over = [f"run_root={tmp_path}", "name=p", "device=cpu", "bench.budgets=[0.5]"]
    res = run_pipeline(load_config(None, over), progress=False)
    assert calls == list(STAGE_NAMES)
    assert [o.status for o in res.stages] == ["ran"] * len(STAGE_NAMES)
    assert res.report == tmp_path / "p" / "report" / "index.html"
    ledger = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert sorted(ledger["stages"]) == sorted(STAGE_NAMES)

    calls.clear()
    res = run_pipeline(load_config(None, over), progress=False)
    assert calls == [] and all(o.status == "up to date" for o in res.stages)
    calls.clear()
    run_pipeline(load_config(None, over), progress=False, force=["report"])
    assert calls == ["report"]

    # a bench setting: only the stages from the fine-tuning on run again
    calls.clear()
    run_pipeline(load_config(None, [*over, "bench.num_samples=64"]), progress=False)
    assert calls == ["finetune", "bench", "report"]

    # a missing output makes its stage (and every later one) run again; --force and --skip
    calls.clear()
    (tmp_path / "p" / "intervals.json").unlink()
    res = run_pipeline(load_config(None, [*over, "bench.num_samples=64"]), progress=False, force=["report"],
                       skip=["search"])
    assert calls == ["intervals", "experts", "router", "finetune", "bench", "report"]  # all after a rerun stage
    assert {o.name: o.status for o in res.stages}["search"] == "skipped"
    with pytest.raises(UserError, match="unknown stage"):
        run_pipeline(load_config(None, over), skip=["nope"])


def test_pipeline_aligns_search_budgets_with_bench(tmp_path, monkeypatch):
    seen = {}

    def fake(stage, cfg, run, device, progress):
        seen[stage.name] = cfg
        return "fake"

    monkeypatch.setattr(pipeline, "_run_stage", fake)
    monkeypatch.setattr(pipeline, "_check_available", lambda stages: None)
    run_pipeline(load_config(None, [f"run_root={tmp_path}", "bench.budgets=[0.3, 0.7]", "search.budgets=[0.5]"]),
                 progress=False)
    assert seen["search"].search.budgets == (0.3, 0.7)


TINY = Path(__file__).with_name("tiny_pipeline.yaml")


@pytest.mark.slow
def test_run_end_to_end_on_a_tiny_model(tmp_path, capsys):
    """The real stages on a tiny embedded model; router and search are left out with --skip (their
    allocations are replaced by a hand-written test allocation, so the mixture path of the bench
    runs too)."""
    from experts.allocation import Allocation
    from experts.training import load_experts
    from nas.cli import main

    common = ["--config", str(TINY), "--set", f"run_root={tmp_path}"]
    # stop after the experts, write a test allocation for "routed", then run the rest
    assert main(["run", *common, "--skip", "router", "--skip", "search", "--skip", "finetune", "--skip", "bench",
                 "--skip", "report"]) == 0
    run = tmp_path / "tinypipe"
    intervals, supernets = load_experts(run / "experts")
    space = supernets[0].space
    arch = space.smallest()
    steps = [2, 2]
    alloc = Allocation("router", 0.7, intervals, (arch, space.full()), (space.macs(arch), space.total_macs),
                       tuple(steps), space.total_macs * 4, info={"train_seconds": 1.5, "train_evaluations": 7})
    alloc.save(run / "allocations" / "router-0.7.json")
    capsys.readouterr()
    assert main(["run", *common, "--skip", "router", "--skip", "search"]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and (run / "report" / "index.html").is_file()
    summary = json.loads((run / "report" / "summary.json").read_text())
    methods = {(r["method"], r["budget_ratio"]) for r in summary["rows"]}
    assert {("base", None), ("base_steps", 0.7), ("static", 0.7), ("uniform", 0.7), ("routed", 0.7)} <= methods
    routed = next(r for r in summary["rows"] if r["method"] == "routed")
    assert routed["allocation_cost"]["evaluations"] == 7
    assert routed["finetune"]["steps_per_expert"] == 2 and routed["finetune"]["num_experts"] == 2
    static = next(r for r in summary["rows"] if r["method"] == "static")
    assert static["finetune"]["steps_total"] == 4  # 2 intervals x 2 steps: the same images as a mixture
    assert [s["method"] for s in summary["skipped"]] == ["searched"]
    assert (run / "mixtures" / "router-0.7" / "model_index.json").is_file()
    # everything is up to date now
    capsys.readouterr()
    assert main(["run", *common, "--skip", "router", "--skip", "search"]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") >= 6
