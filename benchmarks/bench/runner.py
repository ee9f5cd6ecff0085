"""Running the comparison: :func:`run_bench` (measure and append rows) and :func:`prepare_models`
(make the models only). See :mod:`benchmarks.bench`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.bench.context import Candidate, _Context
from benchmarks.bench.methods import _base_candidate, _plan
from benchmarks.bench.records import (
    RECORD_KIND,
    BenchResult,
    _bkey,
    _fmt,
    _machine,
    _record_skip,
    _versions,
    bench_config_key,
    finished_rows,
)
from nas.config import ExperimentConfig
from nas.rundir import RunDir

log = logging.getLogger(__name__)


def prepare_models(cfg: ExperimentConfig, run: RunDir, device: Any, progress: bool = True) -> BenchResult:
    """The fine-tuning stage of ``diffnas run``: make (fine-tune and save) every pruned model the
    benchmark will evaluate, without evaluating. Safe to rerun (finished models are reused)."""
    t0 = time.perf_counter()
    key = bench_config_key(cfg)
    ctx = _Context(cfg, run, device, progress)
    cands, skipped = _plan(ctx, key)
    done = finished_rows(run, key)
    for c in cands:
        if c.method in ("base", "base_steps"):
            continue
        prev = done.get((c.method, _bkey(c.budget_ratio)))
        if prev is not None and prev.get("inputs_key") == c.inputs_key:
            continue
        log.info("preparing %s", c.name)
        c.build()
    for m, b, reason in skipped:
        _record_skip(run, key, m, b, reason)
    return BenchResult((), (), tuple(skipped), time.perf_counter() - t0)


def run_bench(cfg: ExperimentConfig, run: RunDir, device: Any, progress: bool = True) -> BenchResult:
    """Benchmark every method at every budget of ``cfg.bench`` (see :mod:`benchmarks.bench`).

    Raises:
        UserError: no base model, or a feature extractor that cannot be built (checked first).
    """
    import torch

    from nas.data import dataset_id, load_dataset
    from nas.latency import compare_latency
    from nas.metrics import (
        build_extractor,
        check_extractor_available,
        compute_quality,
        quality_with_ci,
        reference_features,
        resolve_extractor_kind,
    )
    from nas.sampling import save_grid

    t0 = time.perf_counter()
    b = cfg.bench
    key = bench_config_key(cfg)
    kind = resolve_extractor_kind(cfg.evaluation.extractor, cfg.data.dataset)
    check_extractor_available(kind, cache_dir=run.cache_dir, inception_weights=cfg.evaluation.inception_weights)
    ctx = _Context(cfg, run, device, progress)
    cands, skipped = _plan(ctx, key)
    for m, bud, reason in skipped:
        _record_skip(run, key, m, bud, reason)
    done = finished_rows(run, key)
    pending: list[Candidate] = []
    reused: list[str] = []
    for c in cands:
        prev = done.get((c.method, _bkey(c.budget_ratio)))
        if prev is not None and prev.get("inputs_key") == c.inputs_key:
            reused.append(c.name)
        else:
            pending.append(c)
    if reused:
        log.info("bench: %d rows already in %s for these inputs, not recomputed: %s", len(reused), run.results_path,
                 ", ".join(reused))
    if not pending:
        return BenchResult((), tuple(reused), tuple(skipped), time.perf_counter() - t0)

    extractor = build_extractor(kind, device=device, cache_dir=run.cache_dir,
                                inception_weights=cfg.evaluation.inception_weights)
    ref_feats = reference_features(dataset_id(cfg.data), load_dataset(cfg.data), extractor, run.cache_dir)
    machine, versions = _machine(device), _versions()
    base_cand = _base_candidate(ctx, None, key)
    base_model, _, _ = base_cand.build()
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[Candidate]] = {}
    for c in pending:
        groups.setdefault(_bkey(c.budget_ratio), []).append(c)
    total = len(pending)
    done_count = 0
    for gkey, group in groups.items():
        for c in group:
            log.info("bench: building %s", c.name)
            c.model, c.macs_per_trajectory, c.extra = c.build()
        # latency: the whole group and the base model, round-robin in one call
        bs = b.latency_batch_size

        def trajectory(model: Any, steps: int) -> Callable[[], object]:
            def fn() -> object:
                with torch.no_grad():
                    return ctx.generate(model, bs, 0, steps, batch_size=bs, progress=False)
            return fn

        fns = {"__base__": trajectory(base_model, cfg.sampling.num_steps)}
        for c in group:
            if c.method != "base":
                fns[c.name] = trajectory(c.model, c.num_steps)
        timing = compare_latency(fns, repeats=b.latency_repeats, warmup=1, device=device)
        group_id = f"{gkey}-{uuid.uuid4().hex[:8]}"
        base_ms = timing["__base__"].median_ms / bs
        for c in group:
            done_count += 1
            log.info("bench [%d/%d]: %s (%d seeds x %d images, %d steps)", done_count, total, c.name, len(b.seeds),
                     b.num_samples, c.num_steps)
            results = []
            grid_rel = None
            for seed in b.seeds:
                with torch.no_grad():
                    images = ctx.generate(c.model, b.num_samples, int(seed), c.num_steps)  # (N,C,H,W) in [-1,1]
                results.append(compute_quality(images, ref_feats, extractor))
                if grid_rel is None:
                    grid = run.samples_dir / "bench" / f"{c.method}-{_bkey(c.budget_ratio)}.png"
                    save_grid(images[: b.grid_images], grid)
                    grid_rel = str(grid.relative_to(run.path))
            q = quality_with_ci(results, confidence=b.confidence)
            ms = base_ms if c.method == "base" else timing[c.name].median_ms / bs
            row = {
                "kind": RECORD_KIND, "run": cfg.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "method": c.method, "budget_ratio": c.budget_ratio, "config_key": key, "inputs_key": c.inputs_key,
                **q, "seeds": list(b.seeds), "sampler": cfg.sampling.sampler, "num_steps": c.num_steps,
                "macs_per_trajectory": int(c.macs_per_trajectory), "base_macs_per_trajectory": int(ctx.base_traj),
                "macs_ratio": c.macs_per_trajectory / ctx.base_traj,
                "latency_ms_per_image": ms, "base_latency_ms_per_image": base_ms, "speedup": base_ms / ms,
                "latency_group": group_id, "latency_batch_size": bs, "latency_repeats": b.latency_repeats,
                "device": str(device), "allocation": c.allocation_path, "allocation_cost": c.allocation_cost,
                "finetune": None, "grid": grid_rel, "machine": machine, "versions": versions,
                "dataset": dataset_id(cfg.data), **c.extra,
            }
            if c.budget_ratio is not None and row["macs_ratio"] > c.budget_ratio + 1e-6:
                log.warning("bench: %s runs at %.3f of the base MACs, over its budget %g", c.name, row["macs_ratio"],
                            c.budget_ratio)
            run.append_result(row)
            rows.append(row)
            log.info("bench: %s FID %.3f [%s, %s], %.3f of the base MACs, %.2fx", c.name, row["fid_mean"],
                     _fmt(row.get("fid_ci_low")), _fmt(row.get("fid_ci_high")), row["macs_ratio"], row["speedup"])
        for c in group:  # free memory before the next budget
            c.model = None
    return BenchResult(tuple(rows), tuple(reused), tuple(skipped), time.perf_counter() - t0)
