"""Running the comparison: :func:`run_bench` (measure and append rows) and :func:`prepare_models`
(make the models only), one after another in this process, or with ``bench.parallel`` as Ray
tasks (:mod:`benchmarks.bench.parallel`). See :mod:`benchmarks.bench`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from benchmarks.bench.context import BenchContext
from benchmarks.bench.methods import base_candidate, plan
from benchmarks.bench.records import BenchResult, bench_config_key, finished_rows, record_skip
from benchmarks.bench.rows import _condition_fields, commit_row, group_latency_fields  # noqa: F401 (tests import it here)
from benchmarks.bench.scoring import BenchEnv, aggregate_seeds, bench_env, score_seed
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.methods import Candidate, budget_key, get_method
from nas.run import RunDir, check_experts

log = logging.getLogger(__name__)

__all__ = ["prepare_models", "run_bench"]


def prepare_models(cfg: ExperimentConfig, run: RunDir, device: Any, progress: bool = True) -> BenchResult:
    """The fine-tuning stage of ``diffnas run``: make (fine-tune and save) every pruned model the
    benchmark will evaluate, without evaluating. Safe to rerun (finished models are reused). With
    ``bench.parallel``: one Ray task per model (:func:`benchmarks.bench.parallel.prepare_models_ray`)."""
    t0 = time.perf_counter()
    key = bench_config_key(cfg)
    check_experts(run)
    ctx = BenchContext(cfg, device=device, progress=progress, run=run)
    cands, skipped = plan(ctx, key)
    done = finished_rows(run, key)
    todo = []
    for c in cands:
        if not get_method(c.method).finetuned:
            continue
        prev = done.get((c.method, budget_key(c.budget_ratio)))
        if prev is not None and prev.get("inputs_key") == c.inputs_key:
            continue
        todo.append(c)
    if cfg.bench.parallel:
        from benchmarks.bench.parallel import prepare_models_ray

        prepare_models_ray(ctx, key, todo)
    for c in todo if not cfg.bench.parallel else ():
        log.info("preparing %s", c.name)
        c.build()
    for m, b, reason in skipped:
        record_skip(run, key, m, b, reason)
    return BenchResult((), (), tuple(skipped), time.perf_counter() - t0)


def run_bench(cfg: ExperimentConfig, run: RunDir, device: Any, progress: bool = True) -> BenchResult:
    """Benchmark every method at every budget of ``cfg.bench`` (see :mod:`benchmarks.bench`); with
    ``bench.parallel`` the models are fine-tuned and the seeds sampled and scored as Ray tasks
    (:func:`benchmarks.bench.parallel.bench_rows_ray`), the rows being the same.

    Raises:
        UserError: no base model, a damaged expert, or a feature extractor that cannot be built
            (checked first).
    """
    from nas.metrics import check_extractor_available, resolve_extractor_kind

    t0 = time.perf_counter()
    key = bench_config_key(cfg)
    kind = resolve_extractor_kind(cfg.evaluation.extractor, cfg.data.dataset)
    check_extractor_available(kind, cache_dir=run.cache_dir, inception_weights=cfg.evaluation.inception_weights)
    check_experts(run)
    ctx = BenchContext(cfg, device=device, progress=progress, run=run)
    cands, skipped = plan(ctx, key)
    for m, bud, reason in skipped:
        record_skip(run, key, m, bud, reason)
    pending, reused = _split_reused(run, key, cands)
    if not pending:
        return _with_guidance(ctx, key, BenchResult((), tuple(reused), tuple(skipped), time.perf_counter() - t0))

    env = bench_env(ctx, key)
    base_model, _, _ = base_candidate(ctx, key).build()
    if cfg.bench.parallel:
        from benchmarks.bench.parallel import bench_rows_ray

        rows = bench_rows_ray(ctx, env, pending, base_model)
        return _with_guidance(ctx, key, BenchResult(tuple(rows), tuple(reused), tuple(skipped),
                                                    time.perf_counter() - t0))
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[Candidate]] = {}
    for c in pending:
        groups.setdefault(budget_key(c.budget_ratio), []).append(c)
    for gkey, group in groups.items():
        rows += _bench_group(ctx, env, gkey, group, base_model, len(rows), len(pending))
    return _with_guidance(ctx, key, BenchResult(tuple(rows), tuple(reused), tuple(skipped), time.perf_counter() - t0))


def _with_guidance(ctx: BenchContext, key: str, result: BenchResult) -> BenchResult:
    """``result``, after the prompt/guidance samples of a text-to-image run
    (:func:`benchmarks.bench.guidance.run_guidance`: nothing for other runs; reused when stored)."""
    from benchmarks.bench.guidance import run_guidance

    run_guidance(ctx, key)
    return result


def _split_reused(run: RunDir, key: str, cands: list[Candidate]) -> tuple[list[Candidate], list[str]]:
    """Candidates to measure, and names of those whose row for the same inputs is already stored
    (logged)."""
    done = finished_rows(run, key)
    pending: list[Candidate] = []
    reused: list[str] = []
    for c in cands:
        prev = done.get((c.method, budget_key(c.budget_ratio)))
        if prev is not None and prev.get("inputs_key") == c.inputs_key:
            reused.append(c.name)
        else:
            pending.append(c)
    if reused:
        log.info("bench: %d rows already in %s for these inputs, not recomputed: %s", len(reused), run.results_path,
                 ", ".join(reused))
    return pending, reused


def _bench_group(ctx: BenchContext, env: BenchEnv, gkey: str, group: list[Candidate], base_model: Any,
                 done_before: int, total: int) -> list[dict[str, Any]]:
    """Build, time and score the candidates of one budget; append (and return) one row each.
    ``done_before`` rows of ``total`` were measured before this group (for the progress log)."""
    latency = group_latency_fields(ctx, gkey, group, base_model)
    rows: list[dict[str, Any]] = []
    for i, c in enumerate(group):
        log.info("bench [%d/%d]: %s (%d seeds x %d images, %d steps)", done_before + i + 1, total, c.name,
                 len(ctx.cfg.bench.seeds), ctx.cfg.bench.num_samples, c.num_steps)
        q, grid_rel = _score(ctx, env, c)
        rows.append(commit_row(ctx, env, c, q, grid_rel, latency[c.name]))
    for c in group:  # free memory before the next budget
        c.model = None
    return rows


def _score(ctx: BenchContext, env: BenchEnv, c: Candidate) -> tuple[dict[str, Any], str | None]:
    """Quality with confidence intervals over the bench seeds; the first seed's sample grid is
    saved (path relative to the run folder)."""
    seeds = ctx.cfg.bench.seeds
    return aggregate_seeds(ctx, [score_seed(ctx, env, c, int(s), grid=i == 0) for i, s in enumerate(seeds)])
