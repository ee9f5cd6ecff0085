"""The comparison behind ``diffnas bench``: allocation methods and baselines at equal MACs and equal cost.

For every budget ``b`` of ``bench.budgets`` (fractions of the base model's trajectory MACs), on the
same data, sampler and step count:

- ``routed``: the routing agent's allocation ``allocations/router-<b>.json``;
- ``searched``: the Optuna/Ray allocation ``allocations/search-<b>.json``;
- ``uniform``: every interval's expert at the same width, the largest
  (:meth:`UNetSpace.uniform <search_spaces.UNetSpace.uniform>`) meeting the budget
  (written to ``allocations/uniform-<b>.json``);
- ``static``: one model pruned with torch-pruning to ``b`` of the base MACs, no intervals
  (:mod:`benchmarks.static_pruning`, Diff-Pruning style Taylor importance by default);
- ``base_steps``: the base model with ``floor(b x num_steps)`` sampling steps;

and once, ``base``: the unpruned base model.

Equal fine-tuning cost: the mixtures (routed, searched, uniform) are materialised and fine-tuned
by :func:`experts.finetune.finetune_allocation` with ``experts.finetune_steps`` x
``experts.finetune_batch_size`` per expert (to ``mixtures/<router|search|uniform>-<b>/``, the
same folder ``diffnas finetune`` writes, reused when already there); the static model, one
network for all ``K`` intervals, gets ``K x experts.finetune_steps`` steps of the same batch
with the same loss and optimiser (:func:`experts.training.run_training` over the whole
schedule), saved to ``mixtures/static-<b>/`` (:func:`benchmarks.static_pruning.save_pruned`).

Each row: FID and KID through :mod:`nas.metrics` (clean-fid; the extractor of
``evaluation.extractor``), ``bench.num_samples`` images per seed for each of ``bench.seeds``
(at least 3), reported as mean and Student-t ``bench.confidence`` interval
(:func:`nas.metrics.quality_with_ci`); trajectory MACs counted with fvcore
(:func:`search_spaces.macs.count_unet_macs` of each network actually run, summed over the
sampler's steps); latency per image of a whole trajectory at ``bench.latency_batch_size``,
timed round-robin together with the base model in one call (:func:`nas.latency.compare_latency`),
and the speed-up against that base timing; the search or routing cost from the allocation's
``info``; a sample grid. Rows are appended to ``results.jsonl`` (``kind: bench``) as they
finish; a rerun skips rows already there for the same method, budget and inputs
(``config_key`` + the allocation's hash). A method whose inputs are missing is skipped with the
reason logged and recorded (``kind: bench_skip``), never replaced by something else.

Example::

    >>> from nas.config import load_config
    >>> from nas.rundir import RunDir
    >>> cfg = load_config(preset="demo")
    >>> result = run_bench(cfg, RunDir.from_config(cfg), "cpu")  # doctest: +SKIP
    >>> [(r["method"], r["budget_ratio"], round(r["fid_mean"], 2)) for r in result.rows]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.config import ExperimentConfig, config_to_dict
from nas.errors import UserError
from nas.rundir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from nas.models import BaseModel

log = logging.getLogger(__name__)

__all__ = [
    "ALLOCATION_PREFIX",
    "BenchResult",
    "RECORD_KIND",
    "SKIP_KIND",
    "bench_config_key",
    "format_bench",
    "finished_rows",
    "normalize_cost",
    "prepare_models",
    "run_bench",
]

RECORD_KIND = "bench"
SKIP_KIND = "bench_skip"
#: allocation-file prefix (``allocations/<prefix>-<budget>.json``) of the allocation methods
ALLOCATION_PREFIX = {"routed": "router", "searched": "search", "uniform": "uniform"}
_PRODUCER = {"routed": "`diffnas route`", "searched": "`diffnas search`"}
STATIC_MARKER = "static.json"


# --------------------------------------------------------------------------------------------
# keys and bookkeeping


def bench_config_key(cfg: ExperimentConfig) -> str:
    """Hash of the settings a benchmark row depends on (data, model, sampler, extractor, space,
    intervals, experts incl. fine-tuning, bench settings other than the budget/method lists, seed).

    Example:
        >>> from nas.config import load_config
        >>> a = bench_config_key(load_config(None, ["bench.budgets=[0.5]"]))
        >>> a == bench_config_key(load_config(None, ["name=other", "device=cpu"]))
        True
        >>> a == bench_config_key(load_config(None, ["bench.num_samples=100"]))
        False
    """
    d = config_to_dict(cfg)
    bench = {k: v for k, v in d["bench"].items() if k not in ("budgets", "methods")}
    payload = {
        "seed": d["seed"], "data": d["data"], "model": d["model"], "sampling": d["sampling"],
        "extractor": {k: d["evaluation"][k] for k in ("extractor", "inception_weights")},
        "space": d["space"], "intervals": d.get("intervals"), "experts": d.get("experts"), "bench": bench,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _bkey(budget: float | None) -> str:
    return "base" if budget is None else f"{float(budget):g}"


def finished_rows(run: RunDir, config_key: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(method, budget key): latest bench row}`` of ``results.jsonl`` for ``config_key``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in run.read_results():
        if r.get("kind") == RECORD_KIND and r.get("config_key") == config_key:
            out[(str(r.get("method")), _bkey(r.get("budget_ratio")))] = r
    return out


def normalize_cost(info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{wall_s, evaluations, raw}`` from an allocation's ``info`` (router: ``train_seconds``,
    ``train_evaluations``; search: ``search_cost``), or None when it records no cost.

    Example:
        >>> normalize_cost({"train_seconds": 3.5, "train_evaluations": 40})["evaluations"]
        40
    """
    if not info:
        return None
    src: dict[str, Any] = dict(info.get("search_cost") or info.get("cost") or {})
    for k in ("train_seconds", "train_evaluations", "repair_evaluations"):
        if k in info:
            src.setdefault(k, info[k])
    wall = next((src[k] for k in ("wall_s_all_sessions", "wall_s", "train_seconds", "seconds") if src.get(k) is not None),
                None)
    evals = next((src[k] for k in ("evaluations", "trials", "train_evaluations", "n_evaluated") if src.get(k) is not None),
                 None)
    if isinstance(evals, dict):  # per fidelity (search: {"proxy": n, "fid": m})
        evals = sum(int(v) for v in evals.values() if isinstance(v, (int, float)))
    if wall is None and evals is None:
        return None
    return {"wall_s": None if wall is None else float(wall), "evaluations": None if evals is None else int(evals),
            "raw": {k: v for k, v in src.items() if isinstance(v, (int, float, str, bool)) or v is None}}


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "diffusers", "torch-pruning", "fvcore", "clean-fid", "optuna", "ray", "numpy", "diffnas"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _machine(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "device": str(device)}
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# --------------------------------------------------------------------------------------------
# what is compared


@dataclass
class Candidate:
    """One (method, budget) to evaluate: how to get its model, and what it cost to make."""

    method: str
    budget_ratio: float | None
    inputs_key: str
    num_steps: int
    build: Callable[[], Any]  # -> (model callable, macs_per_trajectory, extra row fields)
    allocation_path: str | None = None
    allocation_cost: dict[str, Any] | None = None
    model: Any = None
    macs_per_trajectory: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method}@{_bkey(self.budget_ratio)}"


class _Context:
    """Everything shared by the rows of one bench call (base model, data, experts), loaded lazily."""

    def __init__(self, cfg: ExperimentConfig, run: RunDir, device: Any, progress: bool) -> None:
        from nas.commands.base import load_base
        from nas.sampling import make_scheduler, sampling_timesteps
        from search_spaces.macs import count_unet_macs

        self.cfg, self.run, self.device, self.progress = cfg, run, device, progress
        self.base: BaseModel = load_base(cfg, run, device, progress=progress)
        self.scheduler = make_scheduler(cfg.sampling.sampler, self.base.scheduler_config)
        self.timesteps = sampling_timesteps(self.scheduler, cfg.sampling.num_steps)
        self.base_macs_per_call = int(count_unet_macs(self.base.unet, batch_size=1))
        self.base_traj = self.base_macs_per_call * len(self.timesteps)
        self._intervals: Any = None
        self._data: Any = None
        self._experts: Any = None
        self._grads: Any = None

    # lazily loaded inputs --------------------------------------------------------------------
    def intervals(self) -> Any:
        """The experts' intervals (``experts/intervals.json``, else ``intervals.json``) or None."""
        if self._intervals is None:
            from experts.intervals import Intervals

            for p in (self.run.experts_dir / "intervals.json", self.run.intervals_path):
                if p.is_file():
                    try:
                        self._intervals = Intervals.load(p)
                        break
                    except (ValueError, KeyError, json.JSONDecodeError) as exc:
                        log.warning("cannot read %s: %s", p, exc)
        return self._intervals

    def data(self) -> tuple[Any, Any]:
        """(training samples, held-out set or None): the experts' split when there are intervals."""
        if self._data is None:
            iv = self.intervals()
            if iv is not None:
                from nas.commands.experts import experts_data

                self._data = experts_data(self.cfg, self.run, self.base, iv, self.device)
            else:
                from nas.data import encode_latents, load_dataset

                images = load_dataset(self.cfg.data)  # (N,C,H,W) in [-1,1]
                if self.base.vae is not None:
                    images = encode_latents(images, self.base.vae, device=self.device)
                self._data = (images, None)
        return self._data

    def experts(self) -> tuple[Any, list[Any]]:
        if self._experts is None:
            from experts.training import load_experts

            self._experts = load_experts(self.run.experts_dir, device=self.device)
        return self._experts

    def has_experts(self) -> bool:
        return (self.run.experts_dir / "intervals.json").is_file()

    def taylor_gradients(self) -> Any:
        if self._grads is None:
            from benchmarks.static_pruning import taylor_gradients

            b = self.cfg.bench
            train, _ = self.data()
            self._grads = taylor_gradients(self.base.unet, train, self.base.scheduler_config,
                                           num_batches=b.static_taylor_batches,
                                           batch_size=self.cfg.experts.finetune_batch_size, seed=self.cfg.seed,
                                           unet_kwargs=self.base.unet_kwargs if self.base.encoder_hidden_states is not None else None)
        return self._grads

    def generate(self, model: Any, num_images: int, seed: int, num_steps: int, batch_size: int | None = None,
                 progress: bool | None = None) -> torch.Tensor:
        from nas.sampling import generate

        b = self.base
        return generate(model, self.scheduler, num_images=num_images, num_steps=num_steps,
                        batch_size=batch_size or self.cfg.sampling.batch_size, seed=seed, device=self.device,
                        sample_shape=b.sample_shape, vae=b.vae, latent_scale=b.latent_scale,
                        encoder_hidden_states=b.encoder_hidden_states,
                        progress=self.progress if progress is None else progress)


def _finetune_settings(cfg: ExperimentConfig) -> Any:
    from nas.commands.experts import finetune_settings

    return finetune_settings(cfg)


def _mixture_candidate(ctx: _Context, method: str, budget: float, config_key: str) -> Candidate | str:
    """A routed/searched/uniform candidate, or the reason it cannot run."""
    from experts.allocation import Allocation

    run, cfg = ctx.run, ctx.cfg
    if not ctx.has_experts():
        return f"{run.experts_dir.relative_to(run.path)}/ has no trained experts (run `diffnas train-experts`)"
    prefix = ALLOCATION_PREFIX[method]
    path = run.allocations_dir / f"{prefix}-{budget:g}.json"
    if method == "uniform":
        made = _uniform_allocation(ctx, budget, path)
        if isinstance(made, str):
            return made
    elif not path.is_file():
        return f"{path.relative_to(run.path)} does not exist (run {_PRODUCER[method]} with budget {budget:g})"
    try:
        alloc = Allocation.load(path)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        return f"cannot read {path.relative_to(run.path)}: {exc}"
    iv = ctx.intervals()
    if iv is not None and alloc.intervals != iv:
        return (f"{path.relative_to(run.path)} was made for intervals {list(alloc.intervals.boundaries)}, the experts "
                f"have {list(iv.boundaries)}; rerun {_PRODUCER.get(method, 'the allocation')}")
    if not alloc.feasible:
        log.warning("%s is over its budget (achieved %.3f > %g); benchmarked as stored", path, alloc.achieved_ratio,
                    budget)
    settings = _finetune_settings(cfg)
    inputs_key = hashlib.sha256(f"{config_key}:{_file_hash(path)}".encode()).hexdigest()[:16]

    def build() -> tuple[Any, int, dict[str, Any]]:
        from experts.finetune import finetune_allocation
        from experts.pipeline import load_model_folder

        train, heldout = ctx.data()
        out = run.mixture_dir(alloc.method, budget)
        res = finetune_allocation(
            alloc, run.experts_dir, train, settings, out, scheduler_config=ctx.base.scheduler_config,
            device=ctx.device, heldout=heldout, vae=ctx.base.vae, encoder_hidden_states=ctx.base.encoder_hidden_states,
            sampler_scheduler=ctx.scheduler, progress=ctx.progress,
        )
        run.write_config(cfg, out)
        model = load_model_folder(out, device=ctx.device).model
        traj = int(model.trajectory_macs(ctx.timesteps))
        k = alloc.intervals.num_intervals
        extra = {
            "model_path": str(out.relative_to(run.path)),
            "finetune": {"steps_per_expert": res.steps_per_expert, "batch_size": res.batch_size, "num_experts": k,
                         "steps_total": res.steps_per_expert * k, "images_total": res.steps_per_expert * res.batch_size * k,
                         "seconds": res.seconds, "loss_before": list(res.loss_before), "loss_after": list(res.loss_after)},
            "macs_per_expert": list(model.macs_per_expert()),
            "steps_per_expert": alloc.intervals.steps_per_interval(ctx.timesteps),
            "intervals": alloc.intervals.spans(),
            "allocation_achieved_ratio": alloc.achieved_ratio,
        }
        return model, traj, extra

    return Candidate(method, budget, inputs_key, cfg.sampling.num_steps, build,
                     allocation_path=str(path.relative_to(run.path)), allocation_cost=normalize_cost(alloc.info))


def _uniform_allocation(ctx: _Context, budget: float, path: Path) -> Path | str:
    """Write ``allocations/uniform-<b>.json``: every expert at the largest uniform width meeting
    the budget (same arch for every interval)."""
    from benchmarks.static_pruning import uniform_fraction_arch
    from experts.allocation import Allocation

    intervals, supernets = ctx.experts()
    space = supernets[0].space
    found = uniform_fraction_arch(space, budget)
    if found is None:
        return f"no uniform width meets budget {budget:g} (the narrowest uniform arch is over it)"
    arch, fraction = found
    steps = intervals.steps_per_interval(ctx.timesteps)
    macs = int(space.macs(arch))
    alloc = Allocation(method="uniform", budget_ratio=float(budget), intervals=intervals,
                       archs=tuple(arch for _ in steps), macs_per_expert=tuple(macs for _ in steps),
                       steps_per_expert=tuple(steps), base_trajectory_macs=int(space.total_macs) * sum(steps),
                       info={"width_fraction": fraction, "rule": "largest UNetSpace.uniform(fraction) meeting the budget"})
    if path.is_file():
        try:
            if Allocation.load(path) == alloc:
                return path
        except (ValueError, KeyError, json.JSONDecodeError):
            pass
    alloc.save(path)
    return path


def _static_candidate(ctx: _Context, budget: float, config_key: str) -> Candidate:
    cfg, run = ctx.cfg, ctx.run
    inputs_key = hashlib.sha256(f"{config_key}:static".encode()).hexdigest()[:16]

    def build() -> tuple[Any, int, dict[str, Any]]:
        from benchmarks.static_pruning import load_pruned, save_pruned
        from experts.intervals import Intervals
        from experts.losses import training_scheduler
        from experts.training import CHECKPOINTS_DIR, run_training
        from search_spaces.macs import count_unet_macs

        b = cfg.bench
        iv = ctx.intervals()
        k = iv.num_intervals if iv is not None else 1
        settings = _finetune_settings(cfg)
        settings = dataclasses.replace(settings, steps=settings.steps * k)
        out = run.mixture_dir("static", budget)
        identity = {"budget_ratio": budget, "importance": b.static_importance, "taylor_batches": b.static_taylor_batches,
                    "tolerance": b.static_tolerance, "max_iterations": b.static_max_iterations,
                    "settings": json.loads(json.dumps(dataclasses.asdict(settings), default=str)), "num_intervals": k,
                    "base": ctx.base.info.get("config_hash") or ctx.base.source, "config_key": config_key}
        marker = out / STATIC_MARKER
        done = json.loads(marker.read_text()) if marker.is_file() else None
        if done is not None and done.get("identity") == identity and (out / "model").is_dir():
            log.info("static pruning at %g: reusing %s", budget, out)
            model = load_pruned(out / "model", device=ctx.device)
            meta = done["result"]
        else:
            train, _ = ctx.data()
            grads = ctx.taylor_gradients() if b.static_importance == "taylor" else None
            t0 = time.perf_counter()
            res = _prune(ctx, budget, grads)
            model = res.model.to(ctx.device)
            sched = training_scheduler(ctx.base.scheduler_config)
            whole = Intervals(int(sched.config.num_train_timesteps), ())
            kw = {"encoder_hidden_states": ctx.base.encoder_hidden_states} \
                if ctx.base.encoder_hidden_states is not None else None
            tlog = run_training(model, ctx.base.unet, train, whole, 0, settings, sched, out / CHECKPOINTS_DIR,
                                identity, choose_archs=None, device=ctx.device, model_kwargs=kw,
                                progress=ctx.progress, desc=f"finetune static@{budget:g}")
            model.eval().requires_grad_(False)
            meta = {"prune": res.to_dict(), "finetune_seconds": tlog.seconds, "steps": tlog.step,
                    "wall_s": time.perf_counter() - t0}
            save_pruned(model, out / "model", info={"budget_ratio": budget, **res.to_dict()})
            run.write_config(cfg, out)
            tmp = marker.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"identity": identity, "result": meta}, indent=2, sort_keys=True, default=str))
            tmp.replace(marker)
            import shutil

            shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)
        per_call = int(count_unet_macs(model, batch_size=1))
        extra = {
            "model_path": str((out / "model").relative_to(run.path)),
            "finetune": {"steps_per_expert": settings.steps // k, "batch_size": settings.batch_size, "num_experts": k,
                         "steps_total": settings.steps, "images_total": settings.steps * settings.batch_size,
                         "seconds": meta.get("finetune_seconds")},
            "static": {k2: meta["prune"].get(k2) for k2 in ("pruning_ratio", "importance", "macs_ratio", "params", "tries")},
        }
        return model, per_call * len(ctx.timesteps), extra

    return Candidate("static", budget, inputs_key, cfg.sampling.num_steps, build)


def _prune(ctx: _Context, budget: float, grads: Any) -> Any:
    from benchmarks.static_pruning import prune_to_budget

    b = ctx.cfg.bench
    return prune_to_budget(ctx.base.unet, budget, importance=b.static_importance, gradients=grads,
                           max_iterations=b.static_max_iterations, tolerance=b.static_tolerance)


def _base_candidate(ctx: _Context, budget: float | None, config_key: str) -> Candidate:
    from benchmarks.static_pruning import fewer_steps_for_budget

    n = ctx.cfg.sampling.num_steps if budget is None else fewer_steps_for_budget(ctx.cfg.sampling.num_steps, budget)
    method = "base" if budget is None else "base_steps"
    inputs_key = hashlib.sha256(f"{config_key}:{method}:{n}".encode()).hexdigest()[:16]

    def build() -> tuple[Any, int, dict[str, Any]]:
        from nas.sampling import sampling_timesteps

        steps = sampling_timesteps(ctx.scheduler, n)
        return ctx.base.unet, ctx.base_macs_per_call * len(steps), {"model_path": None}

    return Candidate(method, budget, inputs_key, n, build)


def _candidate(ctx: _Context, method: str, budget: float, config_key: str) -> Candidate | str:
    if method in ALLOCATION_PREFIX:
        return _mixture_candidate(ctx, method, budget, config_key)
    if method == "static":
        return _static_candidate(ctx, budget, config_key)
    if method == "base_steps":
        return _base_candidate(ctx, budget, config_key)
    raise ValueError(f"unknown bench method {method!r}")


# --------------------------------------------------------------------------------------------
# running


@dataclass(frozen=True)
class BenchResult:
    """What one ``run_bench`` call did.

    Attributes:
        rows: rows appended by this call (``results.jsonl`` records).
        reused: ``method@budget`` rows already present for the same inputs (not recomputed).
        skipped: ``(method, budget, reason)`` of methods that could not run.
        wall_s: seconds of this call.
    """

    rows: tuple[dict[str, Any], ...]
    reused: tuple[str, ...]
    skipped: tuple[tuple[str, float | None, str], ...]
    wall_s: float


def _record_skip(run: RunDir, config_key: str, method: str, budget: float | None, reason: str) -> None:
    log.warning("bench: %s at budget %s skipped: %s", method, _bkey(budget), reason)
    for r in reversed(run.read_results()):
        if r.get("kind") == SKIP_KIND and r.get("method") == method and _bkey(r.get("budget_ratio")) == _bkey(budget) \
                and r.get("config_key") == config_key:
            if r.get("reason") == reason:
                return
            break
    run.append_result({"kind": SKIP_KIND, "run": run.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "method": method, "budget_ratio": budget, "config_key": config_key, "reason": reason})


def _plan(ctx: _Context, config_key: str) -> tuple[list[Candidate], list[tuple[str, float | None, str]]]:
    cfg = ctx.cfg
    cands: list[Candidate] = []
    skipped: list[tuple[str, float | None, str]] = []
    if "base" in cfg.bench.methods:
        cands.append(_base_candidate(ctx, None, config_key))
    for b in cfg.bench.budgets:
        for m in cfg.bench.methods:
            if m == "base":
                continue
            try:
                c = _candidate(ctx, m, float(b), config_key)
            except UserError as exc:
                c = str(exc)
            if isinstance(c, str):
                skipped.append((m, float(b), c))
            else:
                cands.append(c)
    return cands, skipped


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
    """Benchmark every method at every budget of ``cfg.bench`` (see the module docstring).

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


def _fmt(x: Any) -> str:
    return "-" if x is None or not math.isfinite(float(x)) else f"{float(x):.2f}"


def format_bench(result: BenchResult) -> str:
    """Plain-text table of the rows a bench call wrote, then reused and skipped methods."""
    lines = []
    if result.rows:
        lines.append(f"{'method':<12} {'budget':>6} {'FID (95% CI)':<26} {'MACs ratio':>10} {'speed-up':>8}")
        for r in result.rows:
            ci = f"{r['fid_mean']:.2f} [{_fmt(r.get('fid_ci_low'))}, {_fmt(r.get('fid_ci_high'))}]"
            lines.append(f"{r['method']:<12} {_bkey(r['budget_ratio']):>6} {ci:<26} {r['macs_ratio']:>10.3f} "
                         f"{r['speedup']:>7.2f}x")
    if result.reused:
        lines.append(f"already measured (kept): {', '.join(result.reused)}")
    for m, bud, reason in result.skipped:
        lines.append(f"skipped {m} at {_bkey(bud)}: {reason}")
    return "\n".join(lines) + ("\n" if lines else "")
