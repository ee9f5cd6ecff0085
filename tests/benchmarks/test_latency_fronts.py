"""The report's FID vs ms/image fronts (benchmarks.report.latency_fronts) from stored rows."""

from __future__ import annotations

import json

import pytest

from benchmarks.report import build_report
from search_spaces.errors import UserError
from tests.benchmarks.fakerun import write_fake_run


def _with_batches(run, drop_from: str | None = None) -> None:
    """Give every bench row of the fake run latency at batch 1 and 64 (slower per image at batch 1),
    except rows of ``drop_from`` (timed before the field existed)."""
    lines = []
    for line in (run / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "bench" and r["method"] != drop_from:
            ms = float(r["latency_ms_per_image"])
            r["latency_by_batch"] = {
                "1": {"ms_per_image": 4 * ms, "reference_ms_per_image": 200.0, "speedup": 200.0 / (4 * ms)},
                "64": {"ms_per_image": ms, "reference_ms_per_image": 50.0, "speedup": 50.0 / ms}}
        lines.append(json.dumps(r))
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")


def test_fronts_per_batch_size_in_summary_png_markdown_and_html(tmp_path):
    run = write_fake_run(tmp_path)
    _with_batches(run, drop_from="static")
    rep = build_report(run)
    f = rep.summary["latency_fronts"]
    assert f["available"] and f["batch_sizes"] == [1, 64]
    assert f["rows_without"] == 2  # static at both budgets
    assert "static" not in f["fronts"]["64"] and set(f["fronts"]["64"]) == {"router", "search", "uniform",
                                                                             "fewer_steps", "base"}
    stored = {(r["method"], r["budget_ratio"]): r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())
              if r.get("kind") == "bench" and r["config_key"] == rep.summary["config_key"]}
    for b in ("1", "64"):
        for m, v in f["fronts"][b].items():
            for ms, fid, budget, speedup in v["points"]:
                src = stored[(m, budget)]
                assert ms == src["latency_by_batch"][b]["ms_per_image"] and fid == src["fid_mean"]
                assert speedup == src["latency_by_batch"][b]["speedup"]
            # the front: no point of the method is at least as fast and better
            for ms, fid in v["pareto"]:
                assert not any(p[0] <= ms and p[1] < fid for p in v["points"])
    assert "latency_fronts.png" in rep.summary["files"] and (rep.report_dir / "latency_fronts.png").stat().st_size > 0
    md = rep.report_md.read_text()
    assert "## Quality vs measured latency" in md and "![latency fronts](latency_fronts.png)" in md
    assert "batch 1 and 64" in md and "cpu (2 cores)" in md and "ms/image (speed-up) @ batch 64" in md
    page = rep.index_html.read_text()
    assert 'id="latency"' in page and 'alt="latency fronts"' in page
    again = build_report(run)  # byte-identical rebuild
    assert again.summary == rep.summary and again.report_md.read_text() == md


def test_rows_timed_at_one_batch_size_leave_the_section_out_with_a_note(tmp_path):
    run = write_fake_run(tmp_path)
    rep = build_report(run)
    f = rep.summary["latency_fronts"]
    assert not f["available"] and f["fronts"] == {} and f["rows_without"] == 11
    assert "latency_fronts.png" not in rep.summary["files"]
    assert "_Left out: no row has latency per batch size" in rep.report_md.read_text()


def test_a_damaged_latency_by_batch_is_one_line_naming_the_file(tmp_path):
    run = write_fake_run(tmp_path)
    _with_batches(run)
    lines = (run / "results.jsonl").read_text().splitlines()
    idx = next(i for i, line in enumerate(lines) if json.loads(line).get("latency_by_batch"))
    r = json.loads(lines[idx])
    r["latency_by_batch"]["64"]["ms_per_image"] = "fast"
    lines[idx] = json.dumps(r)
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"results.jsonl line {idx + 1}: 'latency_by_batch'"):
        build_report(run)
