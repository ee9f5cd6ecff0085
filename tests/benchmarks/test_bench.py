"""``diffnas bench`` on a tiny embedded model: rows, skip reasons, resume without recomputing."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench import RECORD_KIND, SKIP_KIND, bench_config_key, normalize_cost, run_bench
from experts.pruned import load_pruned
from nas.config import load_config
from nas.run import RunDir, prepare_run
from search_spaces.macs import count_unet_macs

TINY = [
    "name=tiny", "device=cpu",
    "model.block_out_channels=[8, 16]", "model.norm_num_groups=4", "model.layers_per_block=1",
    "model.train_steps=20", "model.batch_size=16", "model.checkpoint_every=10",
    "sampling.num_steps=4", "sampling.batch_size=32",
    "bench.budgets=[0.5]", "bench.methods=[router, static, base, fewer_steps]", "bench.num_samples=24",
    "bench.static_importance=magnitude", "bench.static_max_iterations=4", "bench.latency_batch_size=4",
    "bench.latency_repeats=1", "bench.grid_images=4",
    "experts.finetune_steps=2", "experts.finetune_batch_size=8",
]


def _rows(run: RunDir, kind: str = RECORD_KIND) -> list[dict]:
    return [r for r in run.read_results() if r.get("kind") == kind]


def test_bench_rows_skips_and_resume(tmp_path):
    cfg = load_config(None, [f"run_root={tmp_path}", *TINY])
    run = prepare_run(cfg)
    first = run_bench(cfg, run, "cpu", progress=False)
    rows = _rows(run)
    assert sorted((r["method"], r["budget_ratio"]) for r in rows) == [("base", None), ("fewer_steps", 0.5),
                                                                       ("static", 0.5)]
    key = bench_config_key(cfg)
    for r in rows:
        assert r["config_key"] == key and r["num_seeds"] == 3 and len(r["fid_values"]) == 3
        assert r["fid_ci_low"] <= r["fid_mean"] <= r["fid_ci_high"]
        assert r["extractor"] == "digits" and r["num_generated"] == 24
        assert r["latency_ms_per_image"] > 0 and r["speedup"] > 0
        assert (run.path / r["grid"]).is_file()
        if r["budget_ratio"] is not None:
            assert r["macs_ratio"] <= 0.5 + 1e-9  # at or under the budget
    by = {r["method"]: r for r in rows}
    assert by["base"]["macs_ratio"] == 1.0 and by["fewer_steps"]["num_steps"] == 2
    # the static model: fine-tuned with the common budget, saved, loads back in one call at its MACs
    static = by["static"]
    assert static["finetune"]["steps_total"] == 2 and static["finetune"]["batch_size"] == 8
    model = load_pruned(run.path / static["model_path"])
    assert count_unet_macs(model) * 4 == static["macs_per_trajectory"]
    # router has no experts: skipped with the reason, recorded once
    skips = _rows(run, SKIP_KIND)
    assert [(s["method"], s["budget_ratio"]) for s in skips] == [("router", 0.5)]
    assert "no trained experts" in skips[0]["reason"]
    assert first.skipped and first.skipped[0][0] == "router"

    # rerun: nothing recomputed, nothing appended
    lines = run.results_path.read_text()
    again = run_bench(cfg, run, "cpu", progress=False)
    assert again.rows == () and sorted(again.reused) == ["base@base", "fewer_steps@0.5", "static@0.5"]
    assert run.results_path.read_text() == lines

    # drop the static row (as if the run died before it was written): only it is redone,
    # from the saved pruned model
    kept = [ln for ln in lines.splitlines() if not (json.loads(ln).get("kind") == RECORD_KIND
                                                      and json.loads(ln).get("method") == "static")]
    run.results_path.write_text("\n".join(kept) + "\n")
    third = run_bench(cfg, run, "cpu", progress=False)
    assert [r["method"] for r in third.rows] == ["static"]
    assert third.rows[0]["macs_per_trajectory"] == static["macs_per_trajectory"]
    assert len(_rows(run)) == 3 and len(_rows(run, SKIP_KIND)) == 1

    # another configuration is a different key: its rows are new
    cfg2 = load_config(None, [f"run_root={tmp_path}", *TINY, "bench.methods=[base]", "bench.num_samples=20"])
    assert bench_config_key(cfg2) != key
    fourth = run_bench(cfg2, run, "cpu", progress=False)
    assert [r["method"] for r in fourth.rows] == ["base"] and fourth.rows[0]["num_generated"] == 20


def test_normalize_cost_reads_router_and_search_info():
    router = normalize_cost({"train_seconds": 12.0, "train_evaluations": 300, "repair_steps": 2})
    assert router["wall_s"] == 12.0 and router["evaluations"] == 300
    search = normalize_cost({"search_cost": {"wall_s": 5.0, "trials": 16, "wall_s_all_sessions": 7.5}})
    assert search["wall_s"] == 7.5 and search["evaluations"] == 16 and "source" not in search
    seeded = normalize_cost({"search_cost": {"wall_s": 5.0, "trials": 16}, "source": "router"})
    assert seeded["source"] == "router"
    assert normalize_cost({}) is None and normalize_cost({"width_fraction": 0.5}) is None


def test_bench_config_needs_three_seeds():
    from nas.errors import UserError

    with pytest.raises(UserError, match="bench.seeds"):
        load_config(None, ["bench.seeds=[0, 1]"])
