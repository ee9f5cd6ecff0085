"""The bench on joint allocations (``schedule.joint``): mixture and ``steps`` rows sample along the
allocation's step schedule, at the schedule's MACs; ``uniform`` keeps the run's steps; the
report shows the steps per interval."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.bench import RECORD_KIND, run_bench
from experts.allocation import Allocation
from experts.schedule import StepSchedule
from nas.cli import main
from nas.config import load_config
from nas.run import RunContext, RunDir

TINY = Path(__file__).parent / "tiny_pipeline.yaml"


def test_bench_rows_of_joint_allocations_use_their_schedules(tmp_path):
    common = ["--config", str(TINY), "--set", f"run_root={tmp_path}"]
    assert main(["run", *common, "--skip", "router", "--skip", "search", "--skip", "finetune", "--skip", "bench",
                 "--skip", "report"]) == 0
    cfg = load_config(TINY, [f"run_root={tmp_path}", "schedule.joint=true",
                             "bench.methods=[search, uniform, steps, base]"])
    run = RunDir(tmp_path, "tinypipe")
    ctx = RunContext(cfg, device="cpu", progress=False)
    intervals, supernets = ctx.experts()
    space = supernets[0].space
    base_traj = ctx.base_traj
    small, full = space.smallest(), space.full()
    joint = StepSchedule.from_counts(intervals, (1, 3), ("trailing", "uniform"))
    Allocation("search", 0.7, intervals, (full, small), (space.macs(full), space.macs(small)), (1, 3), base_traj,
               schedule=joint).save(run.allocations_dir / "search-0.7.json")
    only_steps = StepSchedule.from_counts(intervals, (1, 1), "trailing")
    Allocation("steps", 0.7, intervals, (full, full), (space.macs(full),) * 2, (1, 1), base_traj,
               schedule=only_steps).save(run.allocations_dir / "steps-0.7.json")
    run_bench(cfg, run, "cpu", progress=False)
    rows = {r["method"]: r for r in run.read_results() if r.get("kind") == RECORD_KIND}
    assert set(rows) == {"search", "uniform", "steps", "base"}
    search = rows["search"]
    assert search["timesteps"] == joint.timesteps() and search["num_steps"] == 4
    assert search["steps_per_expert"] == [1, 3]
    assert search["macs_per_trajectory"] == space.macs(full) + 3 * space.macs(small)
    steps = rows["steps"]
    assert steps["timesteps"] == only_steps.timesteps() and steps["num_steps"] == 2
    assert steps["macs_per_trajectory"] == 2 * ctx.base_macs_per_call and steps["macs_ratio"] == 0.5
    for name in ("uniform", "base"):  # baselines keep the run's evenly spaced steps
        assert "timesteps" not in rows[name] and rows[name]["num_steps"] == cfg.sampling.num_steps
    assert main(["report", "--config", str(TINY), "--set", f"run_root={tmp_path}", "--set", "schedule.joint=true",
                 "--set", "bench.methods=[search, uniform, steps, base]", "-q"]) == 0
    summary = json.loads((run.report_dir / "summary.json").read_text())
    per = {r["method"]: r.get("steps_per_interval") for r in summary["rows"]}
    assert per == {"search": [1, 3], "steps": [1, 1], "uniform": None, "base": None}
    report = (run.report_dir / "report.md").read_text()
    assert "| 4 (1+3) |" in report and "| 2 (1+1) |" in report
    assert "sample along their allocation's own step schedule" in report
