"""Training the interval experts of a run and fine-tuning the experts of an allocation: what
``diffnas train-experts`` and ``diffnas finetune`` run.

- :func:`train_run_experts` reads ``runs/<name>/intervals.json``, trains one elastic expert per
  interval (``experts.*`` keys, :class:`nas.config.ExpertsConfig`) into ``runs/<name>/experts/``
  (one after another, or as one Ray task each with ``experts.parallel``: :func:`expert_runner`),
  then writes the held-out table ``experts/table.md`` (+ ``.json``): each expert at the smallest
  arch (and at width 0.5) against the base model pruned to the same arch without fine-tuning.
- :func:`finetune_run` materialises each expert at an allocation's arch, fine-tunes it for
  ``experts.finetune_steps`` x ``experts.finetune_batch_size`` images on its interval and saves
  the mixture pipeline to ``runs/<name>/mixtures/<method>-<budget>/``.

Both split the data once (seeded by ``seed``): ``experts.heldout_fraction`` of the images are
kept out of training and give the fixed held-out set ``experts/heldout.safetensors``
(:class:`experts.losses.HeldOutSet`) that every method is scored on (:func:`nas.run.experts_data`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run import RunContext, experts_data, finetune_settings, read_intervals, space_options, train_settings

if TYPE_CHECKING:  # pragma: no cover
    from experts.allocation import Allocation
    from experts.intervals import Intervals

__all__ = ["ExpertsOutcome", "FinetuneOutcome", "expert_runner", "finetune_run", "train_run_experts"]


@dataclass(frozen=True)
class ExpertsOutcome:
    """What :func:`train_run_experts` did.

    Attributes:
        intervals: the experts' intervals.
        result: :class:`experts.training.TrainExpertsResult` of the experts trained in this call.
        table: the held-out table (None while some experts are not trained yet).
        wall_s: seconds from the start of training to the table written.
        experts_dir: where the experts and the table are.
    """

    intervals: Intervals
    result: Any
    table: str | None
    wall_s: float
    experts_dir: Path

    def lines(self) -> list[str]:
        """The summary ``diffnas train-experts`` prints, one line per entry."""
        spans = self.intervals.spans()
        out = [f"expert {r.k} {list(spans[r.k])}: {r.steps} steps, {r.seconds:.1f} s, final training loss "
               f"{r.final_loss:.4f} -> {r.path}" for r in self.result.experts]
        if self.table is None:
            return [*out, "some experts are not trained yet; the table is written once all are"]
        return [*out, self.table, f"wrote {self.experts_dir} (table.md, table.json) in {self.wall_s:.1f} s"]


def _check_only(only: Sequence[int] | None, intervals: Intervals) -> None:
    bad = [k for k in only or () if not 0 <= k < intervals.num_intervals]
    if bad:
        raise UserError(f"--expert {bad[0]} is not an interval index (0..{intervals.num_intervals - 1})")


def expert_runner(cfg: ExperimentConfig) -> Callable[[Sequence[Any]], Sequence[Any]] | None:
    """The runner of the experts' jobs: ``None`` (one after another in this process) unless
    ``experts.parallel``, then one Ray task per expert (:func:`nas.ray_backend.run_expert_jobs_ray`)
    on the local Ray sized by ``search.num_cpus``/``search.num_gpus`` or the cluster of
    ``search.address``, with ``experts.cpus_per_task``/``gpus_per_task``/``max_retries``;
    ``experts.data_parallel_workers`` > 1: each expert data-parallel over that many Ray workers
    (:func:`nas.ray_backend.run_expert_jobs_data_parallel`).

    Example:
        >>> from nas.config import load_config
        >>> expert_runner(load_config(None, [])) is None
        True
    """
    e = cfg.experts
    if e.data_parallel_workers > 1:  # each expert across several workers, the experts one after another

        def run_data_parallel(jobs: Sequence[Any]) -> Sequence[Any]:
            from nas.ray_backend import ExpertTaskResources, run_expert_jobs_data_parallel

            return run_expert_jobs_data_parallel(
                jobs, cfg.search, ExpertTaskResources(e.cpus_per_task, e.gpus_per_task, e.max_retries),
                workers=e.data_parallel_workers)

        return run_data_parallel
    if not cfg.experts.parallel:
        return None

    def run(jobs: Sequence[Any]) -> Sequence[Any]:
        from nas.ray_backend import ExpertTaskResources, run_expert_jobs_ray

        return run_expert_jobs_ray(jobs, cfg.search, ExpertTaskResources(e.cpus_per_task, e.gpus_per_task,
                                                                          e.max_retries))

    return run


def train_run_experts(ctx: RunContext, only: Sequence[int] | None = None) -> ExpertsOutcome:
    """Train the run's interval experts (resumable), then write the held-out table.

    Args:
        only: train only these experts (the table is written once all are trained).

    Raises:
        UserError: no ``intervals.json``, or an expert index that is not an interval.
    """
    from experts.training import train_experts

    cfg, run = ctx.cfg, ctx.run
    intervals = read_intervals(run)
    device = ctx.device
    base = ctx.base
    train, heldout = experts_data(cfg, run, base, intervals, device)
    _check_only(only, intervals)
    t0 = time.perf_counter()
    res = train_experts(base.unet, intervals, train, train_settings(cfg), run.experts_dir,
                        scheduler_config=base.scheduler_config, device=device, options=space_options(cfg),
                        importance=cfg.space.importance, encoder_hidden_states=base.encoder_hidden_states,
                        only=None if only is None else list(only), run_jobs=expert_runner(cfg),
                        **ctx.train_condition())
    run.write_config(cfg, run.experts_dir)
    if only is not None and any(not (run.experts_dir / f"expert_{k}").is_dir()
                                for k in range(intervals.num_intervals)):
        return ExpertsOutcome(intervals, res, None, time.perf_counter() - t0, run.experts_dir)
    table = _write_table(ctx, intervals, heldout, res)
    return ExpertsOutcome(intervals, res, table, time.perf_counter() - t0, run.experts_dir)


def _write_table(ctx: RunContext, intervals: Intervals, heldout: Any, res: Any) -> str:
    """Score every expert on the held-out set; write ``experts/table.md`` and ``table.json``."""
    from experts.training import expert_table, format_expert_table
    from nas.run import to_jsonable

    cfg, run, base = ctx.cfg, ctx.run, ctx.base
    kw = {"encoder_hidden_states": base.encoder_hidden_states} if base.encoder_hidden_states is not None else None
    rows = expert_table(run.experts_dir, heldout, base.scheduler_config, device=ctx.device, model_kwargs=kw)
    table = format_expert_table(rows)
    note = (f"Held-out denoising loss (MSE of the {base.scheduler_config.get('prediction_type', 'epsilon')} "
            f"prediction), {heldout.n_per_interval} (image, noise, timestep) draws per interval, images from the "
            f"held-out {cfg.experts.heldout_fraction:.0%} of the data (seed {heldout.seed}); experts trained "
            f"{cfg.experts.train_steps} steps x {cfg.experts.batch_size} images each.")
    (run.experts_dir / "table.md").write_text(f"# Elastic experts vs the pruned base model\n\n{note}\n\n{table}\n")
    (run.experts_dir / "table.json").write_text(json.dumps(to_jsonable(
        {"rows": [r.to_dict() for r in rows], "train_seconds": [r.seconds for r in res.experts],
         "settings": train_settings(cfg), "intervals": intervals.to_dict()}), indent=2))
    return table


@dataclass(frozen=True)
class FinetuneOutcome:
    """What :func:`finetune_run` did: the allocation, the fine-tuning result, the mixture folder."""

    allocation: Allocation
    result: Any
    out: Path

    def lines(self) -> list[str]:
        """The summary ``diffnas finetune`` prints, one line per entry."""
        res, spans = self.result, self.allocation.intervals.spans()
        out = []
        for k in range(self.allocation.intervals.num_intervals):
            before = f"{res.loss_before[k]:.4f}" if res.loss_before else "-"
            after = f"{res.loss_after[k]:.4f}" if res.loss_after else "-"
            out.append(f"expert {k} {list(spans[k])}: {res.macs_per_expert[k]} MACs/call, "
                       f"held-out loss {before} -> {after}")
        out.append(f"fine-tuned {res.steps_per_expert} steps x {res.batch_size} images per expert "
                   f"in {res.seconds:.1f} s -> {self.out}")
        return out


def finetune_run(ctx: RunContext, allocation: Allocation, out: Path | None = None,
                 from_base: bool = False) -> FinetuneOutcome:
    """Materialise and fine-tune the experts of ``allocation``; save the mixture pipeline.

    Args:
        out: the mixture folder (default ``mixtures/<method>-<budget>``, ``<method>-base-<budget>``
            with ``from_base``).
        from_base: prune the base model's supernet instead of the experts (static-pruning baseline).
    """
    from experts.finetune import finetune_allocation
    from experts.training import build_supernet

    cfg, run, device = ctx.cfg, ctx.run, ctx.device
    base = ctx.base
    train, heldout = experts_data(cfg, run, base, allocation.intervals, device)
    if from_base:
        experts: Any = build_supernet(base.unet, space_options(cfg), cfg.space.importance)
        teacher = base.unet
    else:
        experts, teacher = run.experts_dir, None
    out = out or run.mixture_dir(allocation.method + ("-base" if from_base else ""), allocation.budget_ratio)
    res = finetune_allocation(
        allocation, experts, train, finetune_settings(cfg), out, scheduler_config=base.scheduler_config,
        teacher=teacher, device=device, heldout=heldout, vae=base.vae, encoder_hidden_states=base.encoder_hidden_states,
        sampler_scheduler=ctx.scheduler, **ctx.train_condition(),
    )
    run.write_config(cfg, out)
    return FinetuneOutcome(allocation, res, Path(out))
