"""A hand-written run directory (results.jsonl, allocations, intervals, grids, config): no model runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

KEY = "cfgkey-test"
METHODS = ("router", "search", "uniform", "static", "fewer_steps")
BUDGETS = (0.3, 0.5)


def _row(method: str, budget: float | None, fid: float, macs_ratio: float, grid: str | None, key: str = KEY) -> dict:
    fids = [fid - 0.5, fid, fid + 0.5]
    kids = [fid / 1000 - 0.001, fid / 1000, fid / 1000 + 0.001]
    half = 1.2421  # any value: the report copies what is stored
    return {
        "kind": "bench", "run": "fake", "method": method, "budget_ratio": budget, "config_key": key,
        "fid_mean": fid, "fid_std": 0.5, "fid_ci_low": fid - half, "fid_ci_high": fid + half,
        "fid_ci_halfwidth": half, "fid_values": fids,
        "kid_mean": fid / 1000, "kid_std": 0.001, "kid_ci_low": fid / 1000 - 0.0025, "kid_ci_high": fid / 1000 + 0.0025,
        "kid_values": kids, "confidence": 0.95, "num_seeds": 3, "seeds": [0, 1, 2], "extractor": "digits",
        "num_generated": 128, "num_reference": 1797, "feature_dim": 64, "sampler": "ddim",
        "num_steps": 20 if method != "fewer_steps" else max(1, int(20 * (budget or 1))),
        "macs_per_trajectory": int(macs_ratio * 2_000_000_000), "base_macs_per_trajectory": 2_000_000_000,
        "macs_ratio": macs_ratio, "latency_ms_per_image": 50.0 * macs_ratio, "base_latency_ms_per_image": 50.0,
        "speedup": 1.0 / macs_ratio, "latency_group": f"g-{budget}", "latency_batch_size": 16, "latency_repeats": 3,
        "device": "cpu",
        "finetune": None if method in ("base", "fewer_steps") else {
            "steps_per_expert": 10, "batch_size": 8, "num_experts": 2, "steps_total": 20, "images_total": 160},
        "allocation_cost": ({"wall_s": 12.5, "evaluations": 40, **({"source": "router"} if method == "search" else {})}
                            if method in ("router", "search") else None),
        "grid": grid, "machine": {"platform": "test", "cpu_count": 2}, "versions": {"torch": "x", "diffusers": "y"},
    }


def write_fake_run(root: Path, name: str = "fake") -> Path:
    """A run folder with bench rows for 6 methods x 2 budgets, search trials, allocations, grids."""
    from PIL import Image

    run = Path(root) / name
    (run / "allocations").mkdir(parents=True)
    (run / "samples" / "bench").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    # a stale row of another config: must be ignored
    records.append(_row("router", 0.5, 99.0, 0.5, None, key="old-key"))
    fid_table = {"router": (9.0, 7.0), "search": (9.5, 7.5), "uniform": (11.0, 8.0), "static": (12.0, 8.5),
                 "fewer_steps": (20.0, 10.0)}
    for method in METHODS:
        for b, fid in zip(BUDGETS, fid_table[method]):
            grid = f"samples/bench/{method}-{b:g}.png"
            arr = (rng.random((36, 36)) * 255).astype("uint8")
            Image.fromarray(arr).save(run / grid)
            records.append(_row(method, b, fid, b - 0.01, grid))
    Image.fromarray(np.zeros((36, 36), dtype="uint8")).save(run / "samples" / "bench" / "base.png")
    records.append(_row("base", None, 6.0, 1.0, "samples/bench/base.png"))
    records.append({"kind": "bench_skip", "method": "search", "budget_ratio": 0.7, "config_key": KEY,
                    "reason": "allocations/search-0.7.json does not exist (run `diffnas search`)"})
    for i in range(12):
        feasible = i % 3 != 0
        records.append({"kind": "search_trial", "study": "search-b0.5", "budget_ratio": 0.5, "number": i,
                        "fidelity": "proxy", "state": "failed" if i == 11 else "complete",
                        "quality": None if i == 11 else 0.1 + 0.01 * i, "macs_ratio": 0.3 + 0.04 * i,
                        "feasible": feasible})
    with open(run / "results.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    spans = [[0, 400], [400, 1000]]
    for method, per_call in (("router", (0.3, 0.7)), ("search", (0.4, 0.6)), ("uniform", (0.5, 0.5))):
        alloc = {"method": method, "budget_ratio": 0.5,
                 "intervals": {"num_train_timesteps": 1000, "boundaries": [400], "spans": spans},
                 "archs": [{"w": 1}, {"w": 2}], "macs_per_expert": [int(p * 100_000_000) for p in per_call],
                 "steps_per_expert": [8, 12], "base_trajectory_macs": 2_000_000_000,
                 "info": {"search_cost": {"wall_s": 12.5, "evaluations": 40}} if method == "search" else {}}
        (run / "allocations" / f"{method}-0.5.json").write_text(json.dumps(alloc))
    G = 6
    sim = [[1.0 if (i < 3) == (j < 3) else 0.2 for j in range(G)] for i in range(G)]
    (run / "intervals.json").write_text(json.dumps({
        "num_train_timesteps": 1000, "boundaries": [400], "spans": spans, "num_intervals": 2,
        "timesteps": [83, 250, 416, 583, 750, 916], "similarity": sim, "measure": "gradient", "criterion": "elbow"}))
    (run / "config.yaml").write_text("name: fake\nseed: 0\nbench:\n  budgets: [0.3, 0.5]\n")
    return run
