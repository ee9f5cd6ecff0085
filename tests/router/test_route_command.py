"""``diffnas route`` on a tiny run: allocations, log, summary, plot, reuse, errors."""

from __future__ import annotations

import json

import pytest

from experts.allocation import Allocation
from experts.intervals import Intervals
from nas.cli import main
from nas.run import RunDir
from tests.conftest import build_tiny_unet

IV = Intervals(1000, (400,))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run with a tiny base UNet, intervals, experts (0 elastic steps) and the held-out set."""
    root = tmp_path_factory.mktemp("route")
    folder = root / "tiny-unet"
    build_tiny_unet().save_pretrained(folder, safe_serialization=True)
    overrides = [
        f"run_root={root / 'runs'}", "name=x", "device=cpu", f"model.base={folder}", "data.limit=64",
        "sampling.num_steps=4", "experts.train_steps=0", "experts.batch_size=4", "experts.heldout_per_interval=8",
        "router.steps=4", "router.budgets_per_step=1", "router.batch_size=4",
    ]
    run = RunDir(root / "runs", "x")
    IV.save(run.intervals_path)
    args = [a for o in overrides for a in ("--set", o)]
    assert main(["train-experts", *args, "-q"]) == 0
    return run, args


def test_route_writes_feasible_allocations_log_summary_and_plot_then_reuses_them(tiny_run, capsys):
    run, args = tiny_run
    assert main(["route", *args, "--budgets", "0.45", "0.8", "-q"]) == 0
    out = capsys.readouterr().out
    assert "budget 0.45: trajectory MACs ratio" in out and "interval sensitivity" in out
    for b in (0.45, 0.8):
        a = Allocation.load(run.allocations_dir / f"router-{b:g}.json")
        assert a.method == "router" and a.feasible and a.achieved_ratio <= b
        assert a.intervals == IV and sum(a.steps_per_expert) == 4
        for key in ("train_seconds", "train_evaluations", "repair_steps", "expert_evaluations", "config_key"):
            assert key in a.info
    rows = [json.loads(x) for x in (run.router_dir / "train_log.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["step"] == 3
    summary = json.loads((run.router_dir / "summary.json").read_text())
    assert len(summary["sensitivity"]) == 2
    # a run folder stores no absolute path: the allocations are relative to the run folder
    assert summary["allocations"] == ["allocations/router-0.45.json", "allocations/router-0.8.json"]
    assert all((run.path / p).is_file() for p in summary["allocations"])
    assert str(run.path) not in (run.router_dir / "summary.json").read_text()
    assert (run.router_dir / "allocation.png").is_file()
    assert main(["route", *args, "--budgets", "0.45", "0.8", "-q"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_unreachable_budgets_are_skipped_and_all_unreachable_is_an_error(tiny_run, capsys, tmp_path):
    run, args = tiny_run
    assert main(["route", *args, "--budgets", "0.01", "-q"]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("diffnas: error:")]
    assert len(lines) == 1 and "below the smallest mixture" in lines[0]
    assert main(["route", *args, "--budgets", "0.02", "0.6", "-q"]) == 0
    assert "budget 0.02: skipped" in capsys.readouterr().out
    assert (run.allocations_dir / "router-0.6.json").is_file()
    assert not (run.allocations_dir / "router-0.02.json").exists()
    assert main(["route", *args, "--budgets", "0.02", "0.6", "-q"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["route", "--set", f"run_root={tmp_path}", "--set", "name=empty", "--set", "device=cpu",
                 "--set", f"model.base={tmp_path / 'nope'}", "-q"]) == 2


def test_joint_route_writes_allocations_with_schedules_within_budget_and_bounded_cost(tiny_run, capsys):
    run, args = tiny_run
    joint = [*args, "--set", "schedule.joint=true", "--set", "schedule.proxy_images=8",
             "--set", "schedule.reference_steps=6"]
    assert main(["route", *joint, "--set", "router.budget_conditioned=false", "-q"]) == 2
    assert "budget-conditioned" in capsys.readouterr().err
    assert main(["route", *joint, "--budgets", "0.3", "0.8", "-q"]) == 0
    out = capsys.readouterr().out
    assert "joint steps x experts" in out and "proxy evaluations" in out
    for b in (0.3, 0.8):
        a = Allocation.load(run.allocations_dir / f"router-{b:g}.json")
        assert a.method == "router" and a.feasible and a.schedule is not None
        assert a.steps_per_expert == a.schedule.steps_per_interval and 1 <= a.schedule.num_steps <= 4
        info = a.info
        # one candidate per schedule, and one more with the base model serving its full-arch intervals
        assert 1 <= info["schedules_scored"] <= 24
        assert 1 <= info["proxy_evaluations"] <= info["candidates_scored"] <= 2 * info["schedules_scored"]
        assert info["cost"]["evaluations"] == info["train_evaluations"] + info["proxy_evaluations"]
        assert info["proxy"] == "small_fid" and info["proxy_value"] == min(c["value"] for c in info["candidates"])
    summary = json.loads((run.router_dir / "summary.json").read_text())
    assert summary["joint"] and len(summary["budgets"]) == 2
    assert main(["route", *joint, "--budgets", "0.3", "0.8", "-q"]) == 0
    assert "up to date" in capsys.readouterr().out
