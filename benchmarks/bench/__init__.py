"""The comparison behind ``diffnas bench``: allocation methods and baselines at equal MACs and equal cost.

For every budget ``b`` of ``bench.budgets`` (fractions of the base model's trajectory MACs), on the
same data, sampler and step count:

- ``router``: the routing agent's allocation ``allocations/router-<b>.json``;
- ``search``: the Optuna/Ray allocation ``allocations/search-<b>.json``;
- ``uniform``: every interval's expert at the same width, the largest
  (:meth:`UNetSpace.uniform <search_spaces.UNetSpace.uniform>`) meeting the budget
  (written to ``allocations/uniform-<b>.json``);
- ``static``: one model pruned with torch-pruning to ``b`` of the base MACs, no intervals
  (:mod:`benchmarks.static_pruning`, Diff-Pruning style Taylor importance by default);
- ``fewer_steps``: the base model with ``floor(b x num_steps)`` sampling steps;

and once, ``base``: the unpruned base model.

Equal fine-tuning cost: the mixtures (router, search, uniform) are materialised and fine-tuned
by :func:`experts.finetune.finetune_allocation` with ``experts.finetune_steps`` x
``experts.finetune_batch_size`` per expert (to ``mixtures/<router|search|uniform>-<b>/``, the
same folder ``diffnas finetune`` writes, reused when already there); the static model, one
network for all ``K`` intervals, gets ``K x experts.finetune_steps`` steps of the same batch
with the same loss and optimiser (:func:`experts.training.run_training` over the whole
schedule), saved to ``mixtures/static-<b>/`` (:func:`experts.pruned.save_pruned`).

Each row: FID and KID through :mod:`nas.metrics` (clean-fid; the extractor of
``evaluation.extractor``), ``bench.num_samples`` images per seed for each of ``bench.seeds``
(at least 3), reported as mean and Student-t ``bench.confidence`` interval
(:func:`nas.metrics.quality_with_ci`); trajectory MACs counted with fvcore
(:func:`search_spaces.macs.count_unet_macs` of each network actually run, summed over the
sampler's steps); latency per image of a whole trajectory at ``bench.latency_batch_size``
and at every ``bench.latency_batch_sizes`` size (default 1 and 64), every method of a budget and
the base model at every size timed round-robin in one call
(:func:`nas.latency.compare_latency_batches`), and the speed-up against that base timing (the
row's ``latency_ms_per_image``/``speedup`` at ``latency_batch_size``; ``latency_by_batch`` at
every size, the report's FID vs ms/image fronts); the search or routing cost from the allocation's
``info``; a sample grid. Rows are appended to ``results.jsonl`` (``kind: bench``) as they
finish; a rerun skips rows already there for the same method, budget and inputs
(``config_key`` + the allocation's hash). A method whose inputs are missing is skipped with the
reason logged and recorded (``kind: bench_skip``), never replaced by something else.

Modules (every name is importable from ``benchmarks.bench``):

- :mod:`benchmarks.bench.runner`: :func:`run_bench` (the measurement loop, one row per
  method and budget) and :func:`prepare_models` (make the models only);
- :mod:`benchmarks.bench.parallel`: the same with ``bench.parallel``: fine-tuning and each
  (method, budget, seed) sampling job as Ray tasks, each row committed once by the driver;
- :mod:`benchmarks.bench.scoring`: one seed's sampling and scoring, and a row's quality over its
  seeds (shared by both paths); :mod:`benchmarks.bench.rows`: latency of a budget's models and
  the row appended to ``results.jsonl``;
- :mod:`benchmarks.bench.methods`: the plan of a call (:func:`plan`): the candidates of the
  registered allocation methods (:mod:`nas.methods`; the built-in ones in :mod:`benchmarks.methods`)
  named in ``bench.methods``;
- :mod:`benchmarks.bench.context`: :class:`BenchContext`, the run context
  (:class:`nas.run.RunContext`) shared by the rows, with the Taylor gradients of static pruning;
- :mod:`benchmarks.bench.guidance`: a text-to-image run's prompts and guidance (the mixtures at the
  middle budget saved with the base's text encoder and reloaded, grids at guidance 1 and 4, the
  prompt accuracy at 1, 2 and 4, stored in ``bench/guidance/``; nothing for other runs);
- :mod:`benchmarks.bench.records`: row keys and resume lookup (:func:`bench_config_key`,
  :func:`finished_rows`), skip records, :func:`normalize_cost`, machine and versions,
  :class:`BenchResult` and :func:`format_bench`.

Example::

    >>> from nas.config import load_config
    >>> from nas.run import RunDir
    >>> cfg = load_config(preset="demo")
    >>> result = run_bench(cfg, RunDir.from_config(cfg), "cpu")  # doctest: +SKIP
    >>> [(r["method"], r["budget_ratio"], round(r["fid_mean"], 2)) for r in result.rows]  # doctest: +SKIP
"""

from __future__ import annotations

from benchmarks.bench.context import BenchContext
from benchmarks.bench.methods import base_candidate, plan
from benchmarks.bench.records import (
    RECORD_KIND,
    SKIP_KIND,
    BenchResult,
    bench_config_key,
    finished_rows,
    format_bench,
    normalize_cost,
)
from benchmarks.bench.runner import prepare_models, run_bench

__all__ = [
    "BenchContext",
    "BenchResult",
    "RECORD_KIND",
    "SKIP_KIND",
    "base_candidate",
    "bench_config_key",
    "finished_rows",
    "format_bench",
    "normalize_cost",
    "plan",
    "prepare_models",
    "run_bench",
]
