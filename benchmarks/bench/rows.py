"""A bench row: the latency of one budget's models (timed round-robin with the base model) and
the row appended to ``results.jsonl`` (:func:`commit_row`, the one place a row is committed), for
the sequential loop (:mod:`benchmarks.bench.runner`) and the Ray tasks' driver
(:mod:`benchmarks.bench.parallel`). See :mod:`benchmarks.bench`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.bench.context import BenchContext
from benchmarks.bench.records import RECORD_KIND, fmt_number
from benchmarks.bench.scoring import BenchEnv, timesteps_of
from nas.methods import Candidate

log = logging.getLogger(__name__)

__all__ = ["commit_row", "group_latency_fields"]


def group_latency_fields(ctx: BenchContext, gkey: str, group: list[Candidate], base_model: Any) -> dict[str, Any]:
    """Build the models of one budget's ``group`` (``c.model``, ``c.macs_per_trajectory``,
    ``c.extra``) and time them round-robin with the base model: ``{name: latency row fields}``."""
    from nas.latency import per_image_by_batch

    for c in group:
        log.info("bench: building %s", c.name)
        c.model, c.macs_per_trajectory, c.extra = c.build()
    bs = ctx.cfg.bench.latency_batch_size
    timing = _group_latency(ctx, group, base_model)  # {name: {batch size: whole-batch timing}}
    group_id = f"{gkey}-{uuid.uuid4().hex[:8]}"
    base_latency_ms = timing["__base__"][bs].median_ms / bs  # per image
    out: dict[str, Any] = {}
    for c in group:
        ref = "__base__" if c.method == "base" else c.name
        latency_ms = timing[ref][bs].median_ms / bs  # per image
        out[c.name] = {"latency_ms": latency_ms, "base_latency_ms": base_latency_ms, "group_id": group_id,
                       "latency_by_batch": per_image_by_batch(timing, ref, "__base__")}
    return out


def commit_row(ctx: BenchContext, env: BenchEnv, c: Candidate, q: dict[str, Any], grid_rel: str | None,
               latency: dict[str, Any], **more: Any) -> dict[str, Any]:
    """The row of ``c`` (quality ``q``, ``latency`` from :func:`group_latency_fields`, ``more``
    fields), appended to ``results.jsonl``: the one place a bench row is committed."""
    row = _bench_row(ctx, env, c, q, latency["latency_ms"], latency["base_latency_ms"], latency["group_id"], grid_rel)
    row["latency_by_batch"] = latency["latency_by_batch"]
    row.update(more)
    if c.budget_ratio is not None and row["macs_ratio"] > c.budget_ratio + 1e-6:
        log.warning("bench: %s runs at %.3f of the base MACs, over its budget %g", c.name, row["macs_ratio"],
                    c.budget_ratio)
    ctx.run.append_result(row)
    log.info("bench: %s FID %.3f [%s, %s], %.3f of the base MACs, %.2fx", c.name, row["fid_mean"],
             fmt_number(row.get("fid_ci_low")), fmt_number(row.get("fid_ci_high")), row["macs_ratio"], row["speedup"])
    return row


def _group_latency(ctx: BenchContext, group: list[Candidate], base_model: Any) -> dict[str, Any]:
    """Timing of one trajectory batch per model (``__base__`` for the base model) at every batch
    size (``bench.latency_batch_size`` and ``bench.latency_batch_sizes``): ``{name: {size: timing}}``."""
    import torch

    from nas.latency import compare_latency_batches

    # latency: the whole group and the base model at every batch size, round-robin in one call
    b = ctx.cfg.bench
    sizes = [b.latency_batch_size] + [s for s in b.latency_batch_sizes if s != b.latency_batch_size]
    models = {"__base__": (base_model, ctx.cfg.sampling.num_steps, None)}
    models.update({c.name: (c.model, c.num_steps, timesteps_of(c)) for c in group if c.method != "base"})

    def trajectory(name: str, bs: int) -> Callable[[], object]:
        model, steps, timesteps = models[name]

        def fn() -> object:
            with torch.no_grad():
                return ctx.generate(model, bs, 0, steps, batch_size=bs, progress=False, timesteps=timesteps)
        return fn

    return compare_latency_batches(trajectory, list(models), sizes, repeats=b.latency_repeats, warmup=1,
                                   device=ctx.device)


def _condition_fields(ctx: BenchContext, c: Candidate) -> dict[str, Any]:
    """For a class-conditional base: the guidance scale and the trajectory MACs by part (both
    halves of every guided step, :class:`experts.guidance.TrajectoryMacs`); nothing otherwise, so
    unconditional rows keep their fields."""
    from experts.guidance import TrajectoryMacs
    from nas.conditions import sampling_kwargs, vae_decode_macs

    cond = sampling_kwargs(ctx.cfg, ctx.base, 1)
    if not cond:
        return {}
    g = float(cond["guidance_scale"])
    factor = 2 if g != 1.0 else 1
    vae = vae_decode_macs(ctx.base) if ctx.base.vae is not None else 0
    text = 0
    if getattr(ctx.base, "text_encoder", None) is not None:  # a text model: the prompt (and the empty one when guided)
        from nas.conditions import text_encoder_macs

        text = factor * text_encoder_macs(ctx.base)
    parts = TrajectoryMacs(factor * int(c.macs_per_trajectory), text, vae, factor * int(c.num_steps), g)
    return {"guidance_scale": g, "class_labels": "cycle", "macs_parts": dict(parts.to_dict()),
            "macs_per_trajectory": parts.unet, "base_macs_per_trajectory": factor * int(ctx.base_traj)}


def _bench_row(ctx: BenchContext, env: BenchEnv, c: Candidate, q: dict[str, Any], latency_ms: float,
               base_latency_ms: float, group_id: str, grid_rel: str | None) -> dict[str, Any]:
    """The ``results.jsonl`` record of one candidate (latencies per image)."""
    from nas.data import dataset_id

    cfg, b = ctx.cfg, ctx.cfg.bench
    return {
        "kind": RECORD_KIND, "run": cfg.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": c.method, "budget_ratio": c.budget_ratio, "config_key": env.key, "inputs_key": c.inputs_key,
        **q, "seeds": list(b.seeds), "sampler": cfg.sampling.sampler, "num_steps": c.num_steps,
        "macs_per_trajectory": int(c.macs_per_trajectory), "base_macs_per_trajectory": int(ctx.base_traj),
        "macs_ratio": c.macs_per_trajectory / ctx.base_traj,
        "latency_ms_per_image": latency_ms, "base_latency_ms_per_image": base_latency_ms,
        "speedup": base_latency_ms / latency_ms,
        "latency_group": group_id, "latency_batch_size": b.latency_batch_size, "latency_repeats": b.latency_repeats,
        "device": str(ctx.device), "allocation": c.allocation_path, "allocation_cost": c.allocation_cost,
        "finetune": None, "grid": grid_rel, "machine": env.machine, "versions": env.versions,
        "dataset": dataset_id(cfg.data), **_schedule_fields(c), **c.extra, **_condition_fields(ctx, c),
    }


def _schedule_fields(c: Candidate) -> dict[str, Any]:
    """``timesteps`` of a candidate with its own step schedule (nothing otherwise, so rows of
    evenly spaced steps keep their fields)."""
    return {} if c.timesteps is None else {"timesteps": list(c.timesteps)}
