"""The bench on a Ray cluster (``bench.parallel``): fine-tuning and sampling as Ray tasks, each row
committed once by the driver.

- :func:`prepare_models_ray` (the ``finetune`` stage, and the first step of the bench): first one
  task per (mixture, expert) for every mixture the bench will evaluate (a method with
  ``expert_jobs``/``finetune_expert``, :class:`benchmarks.methods.MixtureMethod`): each task
  rebuilds the bench's run context from the run folder, plans that one candidate and fine-tunes
  that one expert (:func:`experts.finetune.finetune_allocation` with ``experts_only``), from and to
  ``mixtures/<method>-<budget>/`` with the expert's own checkpoints, storing its weights in
  ``tuned/expert_<k>/`` (temp folder + rename). Then one task per pruned model (method x budget)
  builds it: a mixture is assembled from its stored experts (nothing trained again; the same
  weights as one task for the whole mixture, bit for bit on the CPU), ``static`` is pruned and
  fine-tuned with torch-pruning. A finished model is reused, and a model already recorded as made
  for the same inputs is not submitted again. Where each job ran (node, host, device) is recorded
  in ``mixtures/ray_jobs.json`` (a model's entry lists its experts' jobs under ``experts``).
- :func:`bench_rows_ray` (the ``bench`` stage): after the fine-tuning tasks, the driver builds each
  budget's models and times their latency round-robin with the base model, on its own machine,
  while no task runs (the timing of one machine, as in the sequential path; on a local Ray the
  tasks would share its cores). Then one task per (method, budget, seed) samples
  ``bench.num_samples`` images and scores them (:func:`benchmarks.bench.scoring.score_seed`,
  the sequential path's own function); the task writes its result to
  ``bench/seeds/<method>-<budget>/<inputs_key>-seed<s>.json`` in the run folder (temp file +
  rename) and returns it. When every seed of a row is in, the driver aggregates them
  (:func:`benchmarks.bench.scoring.aggregate_seeds`) and appends the row to ``results.jsonl``:
  the commit point, as for the search's trials. A rerun skips rows already committed for the same
  inputs (``inputs_key``) and the seeds already stored, so a killed driver repeats no finished
  fine-tuning or sampling job (only the latency of the rows still open is timed again). A row
  records where each seed ran (``jobs``: seed, node, host, device) and, for a model fine-tuned
  in a task, where that ran (``finetune_job``).

On the CPU with the same seeds and torch threads (``experts.cpus_per_task``), a row's FID and KID
per seed equal the sequential path's bit for bit: the same model files, the same sampling and
the same scoring code. Tasks take ``experts.cpus_per_task``/``gpus_per_task``/``max_retries``
and run on the local Ray (``search.num_cpus``/``search.num_gpus``) or the cluster of
``search.address``; the run folder must be on storage every node sees.

Example::

    >>> from nas.config import load_config
    >>> cfg = load_config(preset="demo", overrides=["bench.parallel=true"])  # doctest: +SKIP
    >>> run_bench(cfg, RunDir.from_config(cfg), "cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench.context import BenchContext
from benchmarks.bench.records import bench_config_key
from benchmarks.bench.rows import commit_row, group_latency_fields
from benchmarks.bench.scoring import BenchEnv, aggregate_seeds, bench_env, score_seed
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.methods import Candidate, budget_key, get_method
from nas.run import RunDir

__all__ = ["FINETUNE_JOBS_FILE", "SEEDS_DIR", "bench_rows_ray", "prepare_models_ray", "seed_result_path"]

log = logging.getLogger(__name__)

#: Where the fine-tuning tasks' nodes and devices are recorded (in the mixtures folder).
FINETUNE_JOBS_FILE = "ray_jobs.json"
#: The per-seed results of the sampling tasks (relative to the run folder).
SEEDS_DIR = "bench/seeds"

_JOB_FIELDS = ("node", "host", "device")


def _resources(cfg: ExperimentConfig) -> Any:
    from nas.ray_backend import ExpertTaskResources

    e = cfg.experts
    return ExpertTaskResources(e.cpus_per_task, e.gpus_per_task, e.max_retries)


def _write_json(path: Path, data: Any) -> None:
    """``data`` to ``path`` atomically (a temp sibling unique to this process, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def _task_candidate(cfg: ExperimentConfig, run: RunDir, method: str, budget: float | None, inputs_key: str,
                    device: str) -> tuple[BenchContext, str, Candidate]:
    """In a task: the run context on ``device`` and the candidate the driver planned (UserError when
    the run folder's inputs changed since)."""
    ctx = BenchContext(cfg, device=device, progress=False, run=run)
    key = bench_config_key(cfg)
    c = get_method(method).candidate(ctx, budget, key)
    name = f"{method}@{budget_key(budget)}"
    if isinstance(c, str):
        raise UserError(f"{name} cannot run in its task: {c}")
    if c.inputs_key != inputs_key:
        raise UserError(f"{name}: its inputs changed in {run.path} while the bench ran (another allocation?); rerun")
    return ctx, key, c


def _finetune_task(cfg: ExperimentConfig, run: RunDir, method: str, budget: float | None, inputs_key: str, *,
                   job: dict[str, Any]) -> dict[str, Any]:
    """Ray task: make (fine-tune and save, or reuse) one candidate's model in the run folder."""
    _, _, c = _task_candidate(cfg, run, method, budget, inputs_key, job["device"])
    _, macs, extra = c.build()
    return {"model_path": extra.get("model_path"), "macs_per_trajectory": int(macs)}


def _finetune_expert_task(cfg: ExperimentConfig, run: RunDir, method: str, budget: float | None, inputs_key: str,
                          k: int, *, job: dict[str, Any]) -> dict[str, Any]:
    """Ray task: fine-tune expert ``k`` of one mixture alone and store it in the mixture folder."""
    ctx, _, c = _task_candidate(cfg, run, method, budget, inputs_key, job["device"])
    return get_method(method).finetune_expert(ctx, c, k)  # type: ignore[attr-defined]


def _sample_task(cfg: ExperimentConfig, run: RunDir, method: str, budget: float | None, inputs_key: str, seed: int,
                 grid: bool, *, job: dict[str, Any]) -> dict[str, Any]:
    """Ray task: sample and score one seed of one candidate; the result is stored in the run folder
    and returned."""
    ctx, key, c = _task_candidate(cfg, run, method, budget, inputs_key, job["device"])
    c.model, c.macs_per_trajectory, c.extra = c.build()
    out = score_seed(ctx, bench_env(ctx, key), c, seed, grid)
    rec = {**out, "method": method, "budget_ratio": budget, "inputs_key": inputs_key,
           "job": {k: job[k] for k in _JOB_FIELDS}}
    _write_json(seed_result_path(run, c, seed), rec)
    return rec


def seed_result_path(run: RunDir, c: Candidate, seed: int) -> Path:
    """Where the sampling task of ``c`` and ``seed`` stores its result.

    Example:
        >>> from nas.methods import Candidate
        >>> c = Candidate("static", 0.5, "abc", 4, lambda: None)
        >>> seed_result_path(RunDir("runs", "r"), c, 1).as_posix()
        'runs/r/bench/seeds/static-0.5/abc-seed1.json'
    """
    return run.path / SEEDS_DIR / f"{c.method}-{budget_key(c.budget_ratio)}" / f"{c.inputs_key}-seed{int(seed)}.json"


def _stored_seed(run: RunDir, c: Candidate, seed: int) -> dict[str, Any] | None:
    """The stored result of ``(c, seed)``, or None (missing, unreadable, or for other inputs)."""
    try:
        rec = json.loads(seed_result_path(run, c, seed).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("inputs_key") != c.inputs_key or rec.get("seed") != int(seed) \
            or not isinstance(rec.get("quality"), dict):
        return None
    return rec


def _finetune_jobs(run: RunDir) -> dict[str, Any]:
    try:
        data = json.loads((run.mixtures_dir / FINETUNE_JOBS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data.get("jobs", {}) if isinstance(data, dict) else {}


def _made(run: RunDir, c: Candidate, rec: Any) -> bool:
    """Whether ``rec`` (``c``'s entry of ``mixtures/ray_jobs.json``) says its model was made for
    ``c``'s inputs and the model folder is still there."""
    if not isinstance(rec, dict) or rec.get("inputs_key") != c.inputs_key or "node" not in rec:
        return False
    path = rec.get("model_path")
    return path is None or (run.path / str(path)).exists()


def prepare_models_ray(ctx: BenchContext, key: str, todo: Sequence[Candidate]) -> dict[str, dict[str, Any]]:
    """Make the models of ``todo`` (finetuned candidates of ``ctx``'s plan): one Ray task per
    expert of each mixture, then one per model (see the module docstring); ``{name: job record}``
    of the models made in this call, also merged into ``mixtures/ray_jobs.json``."""
    from nas.ray_backend import TaskCall, ray_cluster, run_tasks_ray

    jobs = _finetune_jobs(ctx.run)
    todo = [c for c in todo if not _made(ctx.run, c, jobs.get(c.name))]
    if not todo:
        return {}
    ctx.data()  # the training data and held-out set: made (and cached) once here, read by the tasks
    by_name = {c.name: c for c in todo}
    done: dict[str, dict[str, Any]] = {}

    def entry(c: Candidate) -> dict[str, Any]:
        """``c``'s entry, started afresh when it was for other inputs."""
        old = jobs.get(c.name)
        if not isinstance(old, dict) or old.get("inputs_key") != c.inputs_key:
            old = {"inputs_key": c.inputs_key}
        jobs[c.name] = old
        return old

    def save() -> None:
        _write_json(ctx.run.mixtures_dir / FINETUNE_JOBS_FILE, {"jobs": jobs})

    def record_expert(name: Hashable, rec: dict[str, Any]) -> None:
        cname, k = name  # type: ignore[misc]
        e = entry(by_name[cname])
        e.setdefault("experts", {})[str(k)] = {**{f: rec[f] for f in _JOB_FIELDS}, "task_wall_s": rec["task_wall_s"]}
        save()
        log.info("finetune: %s expert %d done (%s on %s, %.1f s)", cname, k, rec["device"], rec["host"],
                 rec["task_wall_s"])

    def record(name: Hashable, rec: dict[str, Any]) -> None:
        c = by_name[str(name)]
        e = entry(c)
        e.update({**{k: rec[k] for k in _JOB_FIELDS}, "task_wall_s": rec["task_wall_s"],
                  "model_path": rec["result"]["model_path"]})
        done[c.name] = e
        save()
        log.info("finetune: %s ready (%s on %s, %.1f s)", c.name, rec["device"], rec["host"], rec["task_wall_s"])

    with ray_cluster(ctx.cfg.search):  # one Ray for both rounds (a local one is started once)
        expert_calls = []
        for c in todo:
            split = getattr(get_method(c.method), "expert_jobs", None)
            for k in split(ctx, c) if split is not None else ():
                expert_calls.append(TaskCall((c.name, k), _finetune_expert_task,
                                             (ctx.cfg, ctx.run, c.method, c.budget_ratio, c.inputs_key, k)))
        if expert_calls:
            log.info("finetune: %d expert jobs for %d models", len(expert_calls), len(todo))
            run_tasks_ray(expert_calls, ctx.cfg.search, _resources(ctx.cfg), name="diffnas-finetune-expert",
                          on_done=record_expert)
        calls = [TaskCall(c.name, _finetune_task, (ctx.cfg, ctx.run, c.method, c.budget_ratio, c.inputs_key))
                 for c in todo]
        run_tasks_ray(calls, ctx.cfg.search, _resources(ctx.cfg), name="diffnas-finetune", on_done=record)
    return done


def bench_rows_ray(ctx: BenchContext, env: BenchEnv, pending: Sequence[Candidate], base_model: Any) -> list[dict[str, Any]]:
    """The rows of ``pending`` (see the module docstring): fine-tuning tasks, the latency in the
    driver, one sampling task per seed not stored yet; each row appended once, as its last seed
    comes in. Returns the rows in the order they were committed."""
    from nas.ray_backend import ray_cluster

    with ray_cluster(ctx.cfg.search):  # one Ray (a local one is started once) for both kinds of tasks
        prepare_models_ray(ctx, env.key, [c for c in pending if get_method(c.method).finetuned])
        return _sample_rows(ctx, env, pending, base_model)


def _sample_rows(ctx: BenchContext, env: BenchEnv, pending: Sequence[Candidate], base_model: Any) -> list[dict[str, Any]]:
    """:func:`bench_rows_ray` once the models are made: latency, then the sampling tasks."""
    from nas.ray_backend import TaskCall, run_tasks_ray

    cfg, run = ctx.cfg, ctx.run
    seeds = [int(s) for s in cfg.bench.seeds]
    groups: dict[str, list[Candidate]] = {}
    for c in pending:
        groups.setdefault(budget_key(c.budget_ratio), []).append(c)
    latency: dict[str, Any] = {}
    for gkey, group in groups.items():  # timed here, while no task runs
        latency.update(group_latency_fields(ctx, gkey, group, base_model))
        for c in group:
            c.model = None
    ft_jobs = _finetune_jobs(run)
    results: dict[str, dict[int, dict[str, Any]]] = {c.name: {} for c in pending}
    for c in pending:
        for s in seeds:
            rec = _stored_seed(run, c, s)
            if rec is not None:
                results[c.name][s] = rec
    rows: list[dict[str, Any]] = []
    committed: set[str] = set()

    def commit_if_complete(c: Candidate) -> None:
        got = results[c.name]
        if len(got) < len(seeds) or c.name in committed:
            return
        committed.add(c.name)
        per_seed = [got[s] for s in seeds]
        q, grid = aggregate_seeds(ctx, per_seed)
        more: dict[str, Any] = {"jobs": [{"seed": s, **{k: got[s].get("job", {}).get(k) for k in _JOB_FIELDS}}
                                         for s in seeds]}
        ft = ft_jobs.get(c.name)
        if isinstance(ft, dict) and ft.get("inputs_key") == c.inputs_key:
            more["finetune_job"] = {k: ft.get(k) for k in _JOB_FIELDS}
            if ft.get("experts"):  # the experts fine-tuned in tasks of their own
                more["finetune_job"]["experts"] = ft["experts"]
        rows.append(commit_row(ctx, env, c, q, grid, latency[c.name], **more))

    for c in pending:  # every seed stored by an earlier session: the row only
        commit_if_complete(c)
    by_name = {c.name: c for c in pending}
    calls = [TaskCall((c.name, s), _sample_task, (cfg, run, c.method, c.budget_ratio, c.inputs_key, s, s == seeds[0]))
             for c in pending for s in seeds if s not in results[c.name]]
    log.info("bench: %d sampling jobs (%d rows, %d seeds each; %d seeds already stored)", len(calls), len(pending),
             len(seeds), len(pending) * len(seeds) - len(calls))

    def on_done(key: Hashable, rec: dict[str, Any]) -> None:
        name, seed = key  # type: ignore[misc]
        c = by_name[name]
        out = rec["result"]
        path = seed_result_path(run, c, seed)
        if _stored_seed(run, c, seed) is None:  # the task's node does not share the run folder
            _write_json(path, out)
        results[name][seed] = out
        commit_if_complete(c)

    run_tasks_ray(calls, cfg.search, _resources(cfg), name="diffnas-sample", on_done=on_done)
    return rows
