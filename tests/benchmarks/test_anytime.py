"""Any-time curves of the report (benchmarks.report.anytime) from hand-built stored results, the
report's section present and left out, and the synthetic benchmark's core on a tiny instance."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from benchmarks.report import anytime_summary, best_at, build_report, load_run, router_curve, search_curves
from tests.benchmarks.fakerun import write_fake_run


def _trial(study, key, q, ratio, t, eval_s=2.0, state="complete", fidelity="proxy", source="sampler", budget=0.5):
    return {"kind": "search_trial", "study": study, "budget_ratio": budget, "key": key, "fidelity": fidelity,
            "source": source, "state": state, "quality": q, "macs_ratio": ratio, "time": t, "eval_s": eval_s,
            "number": 0, "feasible": ratio <= budget}


def _records():
    return [
        _trial("search-b0.5", "a", 5.0, 0.4, 100.0),
        _trial("search-b0.5", "b", 3.0, 0.6, 103.0),  # over the budget: never the best
        _trial("search-b0.5", "a", 1.0, 0.4, 104.0),  # a repeated key: the first line counts
        _trial("search-b0.5", "c", None, 0.3, 105.0, state="failed"),
        _trial("search-b0.5", "d", 4.0, 0.5, 110.0),
        _trial("search-b0.5", "d", 0.5, 0.5, 130.0, fidelity="fid", source="promotion"),  # not the search fidelity
        _trial("custom-b0.5", "x", 3.8, 0.45, 50.0, eval_s=1.0),  # named by search_seeded-0.5.json
        _trial("steps-b0.5", "s", 6.0, 0.5, 10.0, eval_s=4.0),
    ]


def _router_alloc():
    return {"method": "router", "budget_ratio": 0.5, "macs_per_expert": [1, 2], "steps_per_expert": [1, 1],
            "info": {"train_evaluations": 10, "train_seconds": 20.0, "decode_seconds": 1.0, "proxy_seconds": 2.0,
                     "candidates": [{"value": 4.5, "macs_ratio": 0.49}, {"value": 3.5, "macs_ratio": 0.5},
                                    {"value": 3.9, "macs_ratio": 0.48}]}}


def _allocs():
    return {"router-0.5": _router_alloc(),
            "search_seeded-0.5": {"method": "search_seeded", "budget_ratio": 0.5, "info": {"study": "custom-b0.5"}}}


def test_search_and_router_curves_are_exact():
    curves = search_curves(_records(), _allocs())["0.5"]
    assert set(curves) == {"search", "search_seeded", "steps"}
    s = curves["search"]
    # seconds from the first evaluation's start (100 - 2): 2, 5, 7, 12
    assert s["points"] == [[1, 2.0, 5.0], [2, 5.0, 5.0], [3, 7.0, 5.0], [4, 12.0, 4.0]]
    assert (s["evaluations"], s["seconds"], s["best"], s["study"]) == (4, 12.0, 4.0, "search-b0.5")
    assert curves["search_seeded"]["points"] == [[1, 1.0, 3.8]]
    assert curves["steps"]["points"] == [[1, 4.0, 6.0]]
    r = router_curve(_router_alloc())
    # training counted first (10 evaluations, 20 s), then each candidate: +1 and (1 + 2) / 3 s
    assert r["points"] == [[11, 21.0, 4.5], [12, 22.0, 3.5], [13, 23.0, 3.5]]
    assert (r["offset_evaluations"], r["offset_seconds"], r["best"]) == (10, 20.0, 3.5)
    assert best_at(s, 3) == 5.0 and best_at(r, 10) is None
    # without the allocation naming it, the other study is not taken for the search: it keeps its name
    unnamed = search_curves(_records())["0.5"]
    assert unnamed["search"]["study"] == "search-b0.5" and unnamed["custom-b0.5"]["points"] == [[1, 1.0, 3.8]]


def test_anytime_summary_verdict_and_left_out_cases():
    out = anytime_summary(_records(), _allocs())
    assert out["available"] and list(out["budgets"]) == ["0.5"]
    b = out["budgets"]["0.5"]
    assert list(b["curves"]) == ["router", "search", "search_seeded", "steps"] and b["compared_with"] == "search"
    assert b["verdict"] == ("router: 12.5% better than the search's best (3.5 vs 4), at 3.2x its evaluations and "
                            "1.9x its seconds; the search never reached it in 4 evaluations")
    no_router = anytime_summary(_records(), {"router-0.5": {**_router_alloc(), "info": {"train_seconds": 1.0}}})
    assert not no_router["available"] and "no scored candidates" in no_router["note"]
    assert not anytime_summary([], _allocs())["available"]
    assert "no search trials" in anytime_summary([], _allocs())["note"]
    # a router worse than the search: the search's evaluations to reach it are named
    worse = _router_alloc()
    worse["info"]["candidates"] = [{"value": 4.2, "macs_ratio": 0.5}]
    text = anytime_summary(_records(), {**_allocs(), "router-0.5": worse})["budgets"]["0.5"]["verdict"]
    assert text.startswith("router: 5.0% worse than the search's best (4.2 vs 4)")
    assert text.endswith("the search reached it after 4 evaluations")


def _write(run: Path, records, allocs) -> None:
    (run / "allocations").mkdir(parents=True, exist_ok=True)
    with open(run / "results.jsonl", "a") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    for name, a in allocs.items():
        (run / "allocations" / f"{name}.json").write_text(json.dumps(a))


def test_read_from_a_run_folder_matches(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    _write(run, _records(), _allocs())
    data = load_run(run)
    assert anytime_summary(data.records, data.allocations) == anytime_summary(_records(), _allocs())


def test_report_section_present_with_router_candidates(tmp_path):
    run = write_fake_run(tmp_path)
    alloc = json.loads((run / "allocations" / "router-0.5.json").read_text())
    alloc["info"] = _router_alloc()["info"]
    (run / "allocations" / "router-0.5.json").write_text(json.dumps(alloc))
    res = build_report(run)
    a = res.summary["anytime"]
    assert a["available"] and list(a["budgets"]) == ["0.5"]
    assert "anytime.png" in res.summary["files"] and (res.report_dir / "anytime.png").stat().st_size > 1000
    md = res.report_md.read_text()
    assert "## Any-time: routed vs searched at equal cost" in md and a["budgets"]["0.5"]["verdict"] in md
    assert "![any-time](anytime.png)" in md
    page = res.index_html.read_text()
    assert 'id="anytime"' in page and '<li data-budget="0.5">' in page
    stored = json.loads(res.summary_json.read_text())
    assert stored["anytime"]["budgets"]["0.5"]["curves"]["router"]["points"][0] == [11, 21.0, 4.5]


def test_report_section_left_out_with_a_note(tmp_path):
    run = write_fake_run(tmp_path)  # router allocation without candidates (a widths-only run)
    res = build_report(run)
    assert not res.summary["anytime"]["available"]
    assert "anytime.png" not in res.summary["files"] and not (res.report_dir / "anytime.png").exists()
    md = res.report_md.read_text()
    assert "## Any-time: routed vs searched at equal cost" in md
    assert "_Left out: the router's allocations store no scored candidates" in md
    assert 'id="anytime"' in res.index_html.read_text()


# ------------------------------------------------------------------------- synthetic benchmark
TINY = {"num_experts": 2, "num_blocks": 2, "num_skips": 1, "widths": (8, 16, 24, 32)}


def _brute_force_optimum(bench, budget):
    dims = bench.space.free_dimensions()
    best = None
    for values in itertools.product(*[d.choices for d in dims]):
        arch = bench.space.complete(dict(zip((d.name for d in dims), values)))
        if bench.space.macs(arch) <= budget * bench.base_macs + 1e-9:
            loss = bench.loss(arch)
            best = loss if best is None or loss < best else best
    return best


def test_synthetic_benchmark_core_on_a_tiny_instance(tmp_path):
    from benchmarks.anytime_synthetic import _markdown, _plot, run_benchmark
    from router.synthetic import SyntheticMixture

    caps = {"tpe": 12, "nsga2": 12, "random": 12}
    result = run_benchmark(seeds=(1,), budgets=(0.5,), steps=20, caps=caps, instance=TINY)
    row = result["rows"][0]
    bench = SyntheticMixture.default(seed=1, **TINY)
    assert row["optimum"]["0.5"] == pytest.approx(_brute_force_optimum(bench, 0.5), rel=1e-12)
    rb = row["router"]["budgets"]["0.5"]
    assert rb["exact_evaluations"] >= 1 and rb["final_ratio"] <= 0.5 + 1e-9
    assert rb["final_gap"] >= -1e-9  # nothing within the budget beats the exact optimum
    assert rb["curve"][-1][1] == pytest.approx(rb["final_gap"], abs=1e-12)
    for s, cap in caps.items():
        r = row["search"][f"0.5/{s}"]
        assert 1 <= r["evaluations"] <= cap
        gaps = [g for _, g in r["curve"]]
        assert all(g >= -1e-9 for g in gaps) and gaps == sorted(gaps, reverse=True)
        sm = row["summary"][f"0.5/{s}"]
        assert sm["gap_at_cap"] == gaps[-1]
        assert sm["reaches_10E"] == (10 * rb["exact_evaluations"] <= r["evaluations"])
        if not sm["reaches_10E"]:
            assert sm["gap_at_10E"] is None and sm["router_within_1pct_at_10E"] is None
    md = _markdown(result, {"platform": "test"}, "python benchmarks/anytime_synthetic.py")
    assert md.count("| 1 | 0.5 |") == 3 and "## Verdict" in md
    assert _plot(result, tmp_path / "a.png").stat().st_size > 1000
