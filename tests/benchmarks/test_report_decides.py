"""The report decides: one verdict per budget at the top (a winning baseline said plainly), and an
interactive Pareto plot whose hover data holds each point's allocation, rendered offline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from benchmarks.report import build_report
from tests.benchmarks.fakerun import write_fake_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _make_fewer_steps_win_at(run, budget: float, fid: float) -> None:
    lines = []
    for line in (run / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "bench" and r["method"] == "fewer_steps" and r["budget_ratio"] == budget:
            r.update(fid_mean=fid, fid_ci_low=fid - 0.1, fid_ci_high=fid + 0.1)
        lines.append(json.dumps(r))
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")


def test_one_verdict_per_budget_and_a_winning_baseline_is_said_plainly(tmp_path):
    run = write_fake_run(tmp_path)
    _make_fewer_steps_win_at(run, 0.3, 5.0)
    rep = build_report(run)
    verdicts = {v["budget"]: v for v in rep.summary["verdicts"]}
    assert sorted(verdicts) == ["0.3", "0.5"]
    # 0.5: the routed mixture (FID 7.0) beats every baseline; base and best baseline named
    v = verdicts["0.5"]
    assert v["ship"]["method"] == "router" and not v["baseline_wins"]
    assert v["best_baseline"]["method"] == "uniform" and v["base"]["fid_mean"] == 6.0
    assert "ship router-0.5, FID 7.00 [5.76, 8.24] vs base 6.00 [4.76, 7.24]" in v["text"]
    assert "2.04x faster than the base model on cpu (2 cores)" in v["text"]
    assert "the best baseline, uniform" in v["text"]
    # 0.3: fewer steps wins, and the report says so
    w = verdicts["0.3"]
    assert w["ship"]["method"] == "fewer_steps" and w["baseline_wins"]
    assert w["best_own"]["method"] == "router" and w["export_command"] is None
    assert w["text"].startswith("at 0.3 of the base model's MACs: a baseline wins: ship fewer_steps-0.3")
    assert "diffnas's best, router" in w["text"] and "num_inference_steps=" in w["text"]
    md = (run / "report" / "report.md").read_text()
    assert md.index("## Which one to ship") < md.index("## Setup") < md.index("## Quality vs MACs")
    assert "(a baseline wins here)" in md
    page = (run / "report" / "index.html").read_text()
    assert page.index('id="verdict"') < page.index('id="setup"')
    assert 'data-budget="0.3" data-ship="fewer_steps" data-baseline-wins="true"' in page


@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: install Debian's chromium (apt-get install -y "
                                             "chromium; .ci/run does) to open the report in a real browser")
def test_the_interactive_plot_renders_offline_with_the_allocation_in_its_hover(tmp_path):
    run = write_fake_run(tmp_path)
    rep = build_report(run)
    page = rep.index_html.read_text()
    spec = json.loads(re.search(r'<script id="pareto-interactive-spec" type="application/json">(.*?)</script>',
                                page, re.S).group(1))
    router = next(t for t in spec["data"] if t["name"] == "router (learned)")
    at_05 = router["customdata"][[round(x, 2) for x in router["x"]].index(0.49)]
    assert at_05[0] == "[0, 400): 8 steps, expert 0.30x; [400, 1000): 12 steps, expert 0.70x"  # allocation
    assert at_05[1] == "7.00 [5.76, 8.24]" and at_05[3] == "24.50"  # FID interval, latency ms
    assert "allocation: %{customdata[0]}" in router["hovertemplate"]
    fewer = next(t for t in spec["data"] if t["name"].startswith("base, fewer"))
    assert fewer["customdata"][0][0] == "base model, 6 steps"

    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           f"--log-net-log={tmp_path / 'net.json'}", "--virtual-time-budget=15000", "--dump-dom",
           rep.index_html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    div = re.search(r'<div id="pareto-interactive"[^>]*>', dom)
    assert div, "the plot's div is missing"
    rendered = re.search(r'data-rendered="(\d+)"', div.group(0))
    assert rendered, f"plotly did not render: {div.group(0)}"
    assert int(rendered.group(1)) == sum(len(t["x"]) for t in spec["data"])  # one marker per reported row
    assert 'class="main-svg"' in dom
    # the page fetched nothing: every URL in the browser's network log is the page itself or the
    # browser's own background traffic (update checks, accounts, dictionaries)
    urls = set(re.findall(r'"url":"([^"]+)"', (tmp_path / "net.json").read_text()))
    own = ("google.com", "googleapis.com", "gvt1.com", "gstatic.com")
    page_requests = {u for u in urls if not u.startswith(("file:", "data:"))
                     and not any(re.match(rf"https?://([^/]+\.)?{re.escape(h)}(/|:|$)", u) for h in own)}
    assert page_requests == set()
    assert not re.search(r'<(img|script|link|iframe)[^>]+(src|href)="https?:', dom)


def test_a_paired_difference_resolves_what_overlapping_intervals_do_not():
    from benchmarks.report.verdict import budget_verdicts, paired_difference

    # a noise batch that is hard for every method (seed 2): the rows' own intervals overlap, the
    # seed-by-seed difference is the same 0.1 each time
    seeds = [0, 1, 2]
    router = {"method": "router", "budget_ratio": 0.3, "fid_values": [0.20, 0.25, 0.40], "seeds": seeds,
              "fid_mean": 0.283, "fid_ci_low": 0.03, "fid_ci_high": 0.54, "confidence": 0.95}
    steps = {"method": "fewer_steps", "budget_ratio": 0.3, "fid_values": [0.30, 0.35, 0.50], "seeds": seeds,
             "fid_mean": 0.383, "fid_ci_low": 0.13, "fid_ci_high": 0.64, "confidence": 0.95, "num_steps": 3}
    v = budget_verdicts({"rows": [router, steps]}, "runs/x", exportable=lambda r: False)[0]
    assert v["overlaps_runner_up"] and v["paired_vs_rival"]["resolved"]
    assert abs(v["paired_vs_rival"]["mean"] - 0.1) < 1e-9
    assert "paired over the same 3 seeds, fewer_steps is 0.100 [0.100, 0.100] worse (resolved)" in v["text"]
    # scored on other seeds (or one seed): nothing paired is claimed
    assert paired_difference(router, {**steps, "seeds": [3, 4, 5]}) is None
    assert paired_difference({**router, "fid_values": [0.2], "seeds": [0]}, {**steps, "fid_values": [0.3],
                                                                             "seeds": [0]}) is None
    noisy = {**steps, "fid_values": [0.10, 0.35, 0.70]}
    d = paired_difference(router, noisy)
    assert not d["resolved"] and d["low"] < 0 < d["high"]
