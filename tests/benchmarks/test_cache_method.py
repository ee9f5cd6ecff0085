"""The ``cache`` bench method (DeepCache on the base model): listed in ``bench.methods`` it is run by
``diffnas run``, picks the largest trajectory MACs ratio under each budget, records its MACs and
settings, skips a budget it cannot reach with the reason, and is drawn in the report."""

from __future__ import annotations

import json

import pytest

from experts.caching import CacheMacs, cache_options, choose_cache
from nas.methods import get_method, load_plugins


def test_cache_is_a_registered_method_needing_only_the_base_model():
    load_plugins()
    method = get_method("cache")
    assert method.label == "DeepCache (caching)" and method.budgeted and not method.finetuned and not method.needs


def test_cache_is_run_by_diffnas_run_at_each_budget_it_reaches(tmp_path):
    from nas.cli import main
    from nas.config import load_config
    from nas.models import load_base
    from tests.benchmarks.test_bench import TINY

    settings = [f"run_root={tmp_path}", *TINY, "bench.methods=[base, cache]", "bench.budgets=[0.1, 0.5]"]
    skips = ["intervals", "experts", "router", "search"]
    assert main(["run", *[a for s in settings for a in ("--set", s)], *[a for s in skips for a in ("--skip", s)]]) == 0
    run = tmp_path / "tiny"
    records = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    rows = {r["method"]: r for r in records if r.get("kind") == "bench"}
    assert sorted(rows) == ["base", "cache"]
    row = rows["cache"]
    assert row["budget_ratio"] == 0.5 and row["num_steps"] == 4 and row["model_path"] is None

    # the row's MACs are the counted full and cached calls summed over the 4 steps ...
    info = row["cache"]
    full, cached, n_full = info["macs_full_call"], info["macs_cached_call"], info["full_steps"]
    assert row["macs_per_trajectory"] == n_full * full + (4 - n_full) * cached
    assert row["base_macs_per_trajectory"] == 4 * full and cached < full
    assert row["macs_ratio"] <= 0.5

    # ... and the largest ratio under the budget over every (interval, branch) of the base UNet
    cfg = load_config(None, settings)
    unet = load_base(cfg, run / "base", "cpu").unet
    per_branch = get_method("cache").branch_macs(unet)
    best = choose_cache(per_branch, 4, 0.5)
    assert (best.settings.interval, best.settings.branch) == (info["interval"], info["branch"])
    assert row["macs_ratio"] == pytest.approx(best.ratio, abs=1e-12)
    cheapest = min(o.ratio for o in cache_options(per_branch, 4))
    assert cheapest > 0.1 and per_branch[0] == CacheMacs(full, per_branch[0].cached)

    skip = [r for r in records if r.get("kind") == "bench_skip" and r["method"] == "cache"]
    assert [s["budget_ratio"] for s in skip] == [0.1]
    assert skip[0]["reason"] == (f"no DeepCache interval/branch meets budget 0.1 at 4 steps "
                                 f"(the cheapest runs at {cheapest:.3f} of the base MACs)")
    assert "| DeepCache (caching) |" in (run / "report" / "report.md").read_text()
