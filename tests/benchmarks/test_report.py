"""The report: built from a hand-written run (no model), numbers consistent, deterministic, opens in a browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.report import (
    build_report,
    fmt_ci,
    fmt_num,
    hypervolume_2d,
    pareto_indices,
    reference_point,
)
from nas.cli import main
from tests.benchmarks.fakerun import KEY, write_fake_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_hypervolume_of_a_known_front():
    ref = (1.0, 4.0)
    # three staircase points: 0.3*1 + 0.3*2 + 0.2*3
    assert hypervolume_2d([(0.2, 3.0), (0.5, 2.0), (0.8, 1.0)], ref) == pytest.approx(1.5)
    # a dominated point and a duplicate add nothing
    assert hypervolume_2d([(0.2, 3.0), (0.5, 2.0), (0.8, 1.0), (0.6, 2.5), (0.5, 2.0)], ref) == pytest.approx(1.5)
    # points beyond the reference add nothing; one point is a rectangle
    assert hypervolume_2d([(1.2, 0.5), (0.5, 4.5)], ref) == 0.0
    assert hypervolume_2d([(0.5, 2.0)], ref) == pytest.approx(1.0)
    assert hypervolume_2d([], ref) == 0.0
    assert pareto_indices([(0.2, 3.0), (0.5, 2.0), (0.6, 2.5), (0.1, 5.0)]) == [3, 0, 1]
    assert reference_point([3.0, 10.0]) == (1.05, 11.0)


def _bench_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]


def test_report_from_stored_results_numbers_match(tmp_path):
    run = write_fake_run(tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rep = build_report(run)
    # the inputs are untouched
    assert {p: p.read_bytes() for p in before} == before
    out = run / "report"
    for name in ("index.html", "report.md", "summary.json", "pareto.png", "search_trials.png", "similarity.png",
                 "allocations.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(rep.summary))
    assert summary["schema"] == "diffnas-report/1"
    assert summary["config_key"] == KEY and summary["ignored_rows"] == 1
    assert sorted(summary["files"]) == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert len(list((out / "grids").glob("*.png"))) == 11  # 5 methods x 2 budgets + base

    # every reported row is a stored row, unchanged
    stored = {(r["method"], r["budget_ratio"]): r for r in _bench_records(run)
              if r.get("kind") == "bench" and r["config_key"] == KEY}
    assert len(summary["rows"]) == len(stored) == 11
    for row in summary["rows"]:
        src = stored[(row["method"], row["budget_ratio"])]
        for k in ("fid_mean", "fid_ci_low", "fid_ci_high", "kid_mean", "kid_ci_low", "kid_ci_high", "macs_ratio",
                  "macs_per_trajectory", "latency_ms_per_image", "speedup", "fid_values"):
            assert row[k] == src[k], (row["method"], k)
    assert all(r["fid_mean"] != 99.0 for r in summary["rows"])  # the stale config's row is not shown

    md = (out / "report.md").read_text()
    page = (out / "index.html").read_text()
    # a search allocation that is the router's own (enqueued) arch says so beside its cost
    assert md.count("12 s, 40 evals; best = the router allocation, enqueued") == 2  # search, 2 budgets
    assert "best = the router allocation, enqueued" in page
    for row in summary["rows"]:
        # markdown shows the formatted numbers
        assert fmt_ci(row["fid_mean"], row["fid_ci_low"], row["fid_ci_high"], 2) in md
        assert fmt_ci(row["kid_mean"], row["kid_ci_low"], row["kid_ci_high"], 4) in md
        # html carries the exact values
        budgets = [b for b in summary["budgets"]] if row["budget_ratio"] is None else [f"{row['budget_ratio']:g}"]
        for b in budgets:
            tr = re.search(rf'<tr data-method="{row["method"]}" data-budget="{re.escape(b)}">(.*?)</tr>', page)
            assert tr, (row["method"], b)
            cells = dict(re.findall(r'data-col="([^"]+)" data-value="([^"]*)"', tr.group(1)))
            assert json.loads(cells["FID"].replace("&quot;", '"')) == row["fid_mean"]
            assert json.loads(cells["KID"]) == row["kid_mean"]
            assert json.loads(cells["MACs ratio"]) == row["macs_ratio"]
            assert json.loads(cells["speed-up"]) == row["speedup"]
    for m, v in summary["methods"].items():
        assert fmt_num(v["hypervolume"], 4) in md
        hv = re.search(rf'<tr data-method="{m}"><td>[^<]*</td><td>\d+</td><td>\d+</td><td data-value="([^"]+)"', page)
        assert hv and json.loads(hv.group(1)) == v["hypervolume"]
    # hypervolume recomputed from the stored rows with the stated reference point
    ref = (summary["reference_point"]["macs_ratio"], summary["reference_point"]["fid"])
    assert ref == (1.05, pytest.approx(1.1 * 20.0))
    router = [(r["macs_ratio"], r["fid_mean"]) for r in stored.values() if r["method"] == "router"]
    assert summary["methods"]["router"]["hypervolume"] == pytest.approx(hypervolume_2d(router, ref))
    assert summary["methods"]["router"]["hypervolume"] > summary["methods"]["static"]["hypervolume"]
    # search trials: feasible and infeasible apart; skip reasons reported
    assert summary["search"]["feasible"] == 7 and summary["search"]["infeasible"] == 4 and summary["search"]["failed"] == 1
    assert summary["skipped"] == [{"method": "search", "budget_ratio": 0.7,
                                   "reason": "allocations/search-0.7.json does not exist (run `diffnas search`)"}]
    assert "search-0.7.json does not exist" in md
    assert summary["allocations"]["router-0.5"]["per_call_ratio"] == pytest.approx([0.3, 0.7])
    assert summary["intervals"]["boundaries"] == [400]
    # self-contained html: no external resource in the markup (plotly.js, inline, holds link
    # strings of its own; the browser test counts the requests the page really makes)
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.S)
    assert not re.search(r'(src|href)="(?!data:)', markup)
    assert "<script src=" not in page
    assert page.count("<img ") == 15


def test_report_cli_twice_gives_the_same_files(tmp_path, capsys):
    run = write_fake_run(tmp_path)
    assert main(["report", str(run)]) == 0
    assert "report: " in capsys.readouterr().out
    first = {p.relative_to(run): p.read_bytes() for p in (run / "report").rglob("*") if p.is_file()}
    assert main(["report", str(run)]) == 0
    second = {p.relative_to(run): p.read_bytes() for p in (run / "report").rglob("*") if p.is_file()}
    assert first.keys() == second.keys() and len(first) > 5
    for k in first:
        assert first[k] == second[k], k


def test_report_without_results_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "results.jsonl does not exist" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: install Debian's chromium (apt-get install -y "
                                             "chromium; .ci/run does) to open the report in a real browser")
def test_report_opens_in_headless_chromium_with_every_plot(tmp_path):
    run = write_fake_run(tmp_path)
    rep = build_report(run)
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", "--dump-dom", rep.index_html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    total = re.search(r'data-images-total="(\d+)"', body.group(1))
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(1))
    assert total and loaded, f"the page's check script did not run: {body.group(0)}"
    n_img = rep.index_html.read_text().count("<img ")
    assert int(total.group(1)) == n_img == 15
    assert int(loaded.group(1)) == n_img, "some plots did not load"
    assert 'data-broken="1"' not in dom
    # the tables made it into the rendered DOM
    assert dom.count('class="results"') == 2
