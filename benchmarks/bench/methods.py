"""The compared methods: how each (method, budget) gets its model (routed, searched, uniform,
static, base, base_steps), and the plan of one bench call. See :mod:`benchmarks.bench`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from benchmarks.bench.context import Candidate, _Context
from benchmarks.bench.records import _file_hash, normalize_cost
from nas.config import ExperimentConfig
from nas.errors import UserError

log = logging.getLogger(__name__)

#: allocation-file prefix (``allocations/<prefix>-<budget>.json``) of the allocation methods
ALLOCATION_PREFIX = {"routed": "router", "searched": "search", "uniform": "uniform"}
_PRODUCER = {"routed": "`diffnas route`", "searched": "`diffnas search`"}
STATIC_MARKER = "static.json"


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
            pass  # an unreadable stale file is rewritten below
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
