"""``diffnas run``: stage order, skipping up-to-date stages, stages registered by plugins, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas.config import load_config
from nas.errors import UserError
from nas.run import _runner as runner
from nas.run import _stages as stages
from nas.run import Stage, register_stage, run_pipeline, stage_key, stage_names

STAGE_NAMES = stage_names()


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


def test_the_schedule_section_counts_from_the_router_on_and_only_when_joint():
    a = load_config(None, [])
    off = load_config(None, ["schedule.proxy_images=8", "schedule.max_steps=5"])
    assert all(stage_key(a, s) == stage_key(off, s) for s in STAGE_NAMES)  # joint off: nothing depends on it
    on = load_config(None, ["schedule.joint=true"])
    assert stage_key(a, "experts") == stage_key(on, "experts")
    assert stage_key(a, "router") != stage_key(on, "router") and stage_key(a, "search") != stage_key(on, "search")


def test_the_stages_are_the_methods_then_the_benchmarks():
    assert STAGE_NAMES == ("base", "intervals", "experts", "router", "search", "finetune", "bench", "report")


def test_a_failing_stage_is_named_and_later_stages_do_not_run(tmp_path, monkeypatch):
    calls = []

    def fake(stage, ctx):
        calls.append(stage.name)
        if stage.name == "experts":
            raise UserError("no data")
        return "ran"

    monkeypatch.setattr(runner, "_run_stage", fake)
    with pytest.raises(UserError, match=r"stage 'experts' \(3/8\) failed: no data"):
        run_pipeline(load_config(None, [f"run_root={tmp_path}"]), progress=False)
    assert calls == ["base", "intervals", "experts"]


def test_a_registered_stage_runs_at_its_position(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "_REGISTRY", dict(stages._REGISTRY))
    seen = []

    def toy(ctx):
        seen.append(ctx.run.path)
        (ctx.run.path / "toy.txt").write_text("toy")
        return "toy done"

    register_stage(Stage("toy", "a plugin's stage", (), toy, lambda ctx: [ctx.run.path / "toy.txt"], 45))
    with pytest.raises(ValueError, match="registered twice"):
        register_stage(Stage("toy", "another", (), toy, lambda ctx: [], 46))
    with pytest.raises(ValueError, match="position of stage 'toy'"):
        register_stage(Stage("toy2", "another", (), toy, lambda ctx: [], 45))
    calls = []
    monkeypatch.setattr(runner, "_run_stage",
                        lambda stage, ctx: stage.run(ctx) if stage.name == "toy" else calls.append(stage.name) or "x")
    res = run_pipeline(load_config(None, [f"run_root={tmp_path}", "name=t"]), progress=False)
    names = [o.name for o in res.stages]
    assert names.index("toy") == names.index("router") + 1 and seen == [tmp_path / "t"]
    assert {o.name: o.detail for o in res.stages}["toy"] == "toy done"
    ledger = json.loads((tmp_path / "t" / "pipeline.json").read_text())
    assert ledger["stages"]["toy"]["key"] == stage_key(load_config(None, [f"run_root={tmp_path}", "name=t"]), "toy")


def _fake_stages(monkeypatch, calls):
    def fake(stage, ctx):
        calls.append(stage.name)
        for p in stage.outputs(ctx):
            if p.suffix:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("{}")
            else:
                p.mkdir(parents=True, exist_ok=True)
        return f"fake: ready in {ctx.run.path / 'mixtures'}"

    monkeypatch.setattr(runner, "_run_stage", fake)


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
    # the ledger names the run's own files relative to it (a moved run's ledger stays true)
    assert {s["detail"] for s in ledger["stages"].values()} == {"fake: ready in mixtures"}
    assert str(tmp_path) not in (tmp_path / "p" / "pipeline.json").read_text()

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

    def fake(stage, ctx):
        seen[stage.name] = ctx.cfg
        return "fake"

    monkeypatch.setattr(runner, "_run_stage", fake)
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
    # stop after the experts, write a test allocation for the router, then run the rest
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
    assert {("base", None), ("fewer_steps", 0.7), ("static", 0.7), ("uniform", 0.7), ("router", 0.7)} <= methods
    router = next(r for r in summary["rows"] if r["method"] == "router")
    assert router["allocation_cost"]["evaluations"] == 7
    assert router["finetune"]["steps_per_expert"] == 2 and router["finetune"]["num_experts"] == 2
    static = next(r for r in summary["rows"] if r["method"] == "static")
    assert static["finetune"]["steps_total"] == 4  # 2 intervals x 2 steps: the same images as a mixture
    assert [s["method"] for s in summary["skipped"]] == ["search"]
    assert (run / "mixtures" / "router-0.7" / "model_index.json").is_file()
    # everything is up to date now
    capsys.readouterr()
    assert main(["run", *common, "--skip", "router", "--skip", "search"]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") >= 6
