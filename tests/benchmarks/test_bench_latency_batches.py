"""``diffnas bench`` times every method at every batch size in one rotation and the report draws
FID vs ms/image per size (tiny embedded model; no timing is asserted)."""

from __future__ import annotations

from benchmarks.bench import RECORD_KIND, run_bench
from benchmarks.report import build_report
from nas.config import load_config
from nas.run import prepare_run

TINY = [
    "name=tiny", "device=cpu",
    "model.block_out_channels=[8, 16]", "model.norm_num_groups=4", "model.layers_per_block=1",
    "model.train_steps=20", "model.batch_size=16", "model.checkpoint_every=10",
    "sampling.num_steps=4", "sampling.batch_size=32",
    "bench.budgets=[0.5]", "bench.methods=[base, fewer_steps]", "bench.num_samples=16",
    "bench.latency_batch_size=4", "bench.latency_batch_sizes=[1, 8]", "bench.latency_repeats=1",
    "bench.grid_images=4",
]


def test_rows_carry_latency_per_batch_size_and_the_report_draws_one_front_each(tmp_path):
    cfg = load_config(None, [f"run_root={tmp_path}", *TINY])
    run = prepare_run(cfg)
    run_bench(cfg, run, "cpu", progress=False)
    rows = {r["method"]: r for r in run.read_results() if r.get("kind") == RECORD_KIND}
    assert sorted(rows) == ["base", "fewer_steps"]
    for r in rows.values():
        by = r["latency_by_batch"]
        assert sorted(by, key=int) == ["1", "4", "8"]  # latency_batch_size is always timed too
        assert all(e["ms_per_image"] > 0 and e["reference_ms_per_image"] > 0 for e in by.values())
        # the headline fields are the latency_batch_size entry of the same rotation
        assert r["latency_ms_per_image"] == by["4"]["ms_per_image"] and r["speedup"] == by["4"]["speedup"]
        assert all(e["speedup"] == e["reference_ms_per_image"] / e["ms_per_image"] for e in by.values())
    assert all(e["speedup"] == 1.0 for e in rows["base"]["latency_by_batch"].values())

    rep = build_report(run.path)
    f = rep.summary["latency_fronts"]
    assert f["available"] and f["batch_sizes"] == [1, 4, 8] and f["rows_without"] == 0
    assert set(f["fronts"]["8"]) == {"base", "fewer_steps"}
    assert "latency_fronts.png" in rep.summary["files"]
    assert "ms/image (speed-up) @ batch 8" in rep.report_md.read_text()
