"""Per-interval elastic fine-tuning: one supernet copy of the pretrained model per interval.

:func:`train_experts` (what ``diffnas train-experts`` calls):

1. wraps the pretrained UNet in an :class:`~search_spaces.ElasticUNet` once (channels ordered by
   importance on the *pretrained* weights) and saves it to ``<out>/supernet/``: every expert
   starts from this same ordering, so an arch means the same channels in every expert, and it
   is the frozen teacher (the full arch computes the pretrained function);
2. trains one copy per interval ``k`` (:func:`train_one_expert`) only on timesteps of that
   interval, with the *sandwich rule*: every step evaluates the full arch, the smallest arch
   and ``random_archs`` random archs on the same noisy batch and accumulates their gradients
   (each sub-network's loss = denoising + ``distill_weight`` x MSE to the frozen teacher);
   AdamW, seeded, with a progress bar;
3. writes ``<out>/expert_<k>/`` (``ElasticUNet.save_pretrained``: safetensors) and
   ``<out>/intervals.json``, ``<out>/manifest.json``.

Resuming: every ``checkpoint_every`` steps (and at the end of each call) an expert's state is
saved to ``<out>/checkpoints/expert_<k>/``: weights and AdamW state as safetensors, step, RNG
states and the loss log as JSON (no pickles). A killed run continues from the last checkpoint
when rerun with the same settings; finished experts are reused; raising ``steps`` continues
training from the last checkpoint. Settings that change the result (learning rate, batch size,
intervals, the base model, ...) must match the stored ones, else a :class:`UserError` says
which folder to delete. On the CPU with a fixed number of threads a resumed run reproduces the
uninterrupted run's weights exactly (the tests check this).

Parallel experts (e.g. Ray tasks): :func:`prepare_expert_jobs` does step 1 and returns one
picklable :class:`ExpertJob` per interval; :func:`run_expert_job` (= :func:`train_one_expert`)
trains one of them anywhere the folder is visible (``train_experts(..., run_jobs=...)`` hands
the jobs to such a runner, e.g. :func:`nas.ray_backend.run_expert_jobs_ray`), and
:func:`~experts.expert_folder.load_experts` reads the result (the folder layout is in
:mod:`experts.expert_folder`).
This module never imports ray; ``nas/ray_backend/`` submits the jobs.

The training loop itself (:func:`~experts.train_loop.run_training`,
:class:`~experts.train_loop.ExpertTrainSettings`, :class:`~experts.train_loop.TrainLog`) is in
:mod:`experts.train_loop`, the checkpoint folder in :mod:`experts.checkpoint`.

Example::

    >>> from experts.training import ExpertTrainSettings, train_experts
    >>> res = train_experts(base.unet, Intervals.uniform(1000, 3), images, ExpertTrainSettings(steps=300),
    ...                     "runs/demo/experts", scheduler_config=base.scheduler_config)  # doctest: +SKIP
    >>> [r.path.name for r in res.experts]  # doctest: +SKIP
    ['expert_0', 'expert_1', 'expert_2']
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from experts.intervals import Intervals
from experts.denoising import training_scheduler

from experts.checkpoint import jsonable, remove_tree
from experts.expert_folder import (
    CHECKPOINTS_DIR,
    EXPERT_META,
    MANIFEST,
    SUPERNET_DIR,
    base_fingerprint,
    build_supernet,
    expert_dir,
    load_experts,
    load_supernet,
)
from experts.train_loop import ExpertTrainSettings, condition_identity, run_training, sandwich_archs
from search_spaces.base import Arch
from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "ExpertJob",
    "ExpertResult",
    "ExpertTableRow",
    "ExpertsResult",
    "expert_table",
    "format_expert_table",
    "prepare_expert_jobs",
    "run_expert_job",
    "train_experts",
    "train_one_expert",
]


@dataclass(frozen=True)
class ExpertResult:
    """One trained expert: its folder and training log."""

    k: int
    path: Path
    steps: int
    seconds: float
    final_loss: float


@dataclass(frozen=True)
class ExpertsResult:
    """All experts of :func:`train_experts`."""

    out_dir: Path
    intervals: Intervals
    experts: tuple[ExpertResult, ...]
    seconds: float


@dataclass(frozen=True)
class ExpertJob:
    """Everything :func:`train_one_expert` needs for expert ``k`` (picklable, for Ray tasks).

    ``on_step``: an optional ``(k, step)`` callback after each training step (see
    :func:`~experts.train_loop.run_training`); never stored in the run folder. For a Ray task it
    must be picklable (a module-level function or an instance of a module-level class).
    """

    k: int
    out_dir: Path
    intervals: Intervals
    images: torch.Tensor
    settings: ExpertTrainSettings
    scheduler_config: dict
    identity: dict
    encoder_hidden_states: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)
    labels: torch.Tensor | None = None
    condition_dropout: float = 0.0
    null_label: int | None = None
    on_step: Callable[[int, int], None] | None = None


def prepare_expert_jobs(
    base_unet: nn.Module,
    intervals: Intervals,
    images: torch.Tensor,
    settings: ExpertTrainSettings,
    out_dir: str | Path,
    *,
    scheduler_config: Mapping[str, Any],
    options: Any = None,
    importance: str = "magnitude",
    encoder_hidden_states: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    condition_dropout: float = 0.0,
    null_label: int | None = None,
) -> list[ExpertJob]:
    """Write ``<out>/supernet``, ``intervals.json`` and ``manifest.json``; one job per interval.

    Rerunning with the same base, options and intervals reuses ``supernet/``; anything else
    is a :class:`UserError` (experts of another base or other intervals are never mixed).
    ``labels`` ((N,) classes of ``images``), ``condition_dropout`` and ``null_label``: a
    class-conditional base (see :func:`~experts.train_loop.run_training`); the condition is
    recorded in the manifest and the experts' identity.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = base_fingerprint(base_unet)
    sup_dir = out / SUPERNET_DIR
    manifest_path = out / MANIFEST
    opts_dict = None
    if options is not None:
        opts_dict = jsonable(dataclasses.asdict(options))
    manifest = {
        "format": "diffnas-experts",
        "intervals": intervals.to_dict(),
        "base_fingerprint": fp,
        "importance": importance,
        "options": opts_dict,
        "settings": jsonable(settings.identity()),
        "scheduler_config": jsonable({k: v for k, v in dict(scheduler_config).items()}),
    }
    condition = condition_identity({}, labels, condition_dropout, null_label).get("condition")
    if condition is not None:  # unconditional manifests keep their keys
        manifest["condition"] = condition
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        diff = [key for key in ("intervals", "base_fingerprint", "importance", "options", "settings", "condition")
                if old.get(key) != manifest.get(key)]
        if diff:
            raise UserError(
                f"{out} holds experts made with other {', '.join(diff)}; delete {out} to train new ones "
                f"(or use another run name)"
            )
    if not (sup_dir / "diffnas_supernet.json").is_file():
        sup = build_supernet(base_unet, options, importance)
        tmp = out / (SUPERNET_DIR + ".tmp")
        remove_tree(tmp)
        sup.save_pretrained(tmp)
        remove_tree(sup_dir)
        tmp.rename(sup_dir)
    intervals.save(out / "intervals.json")
    tmp_manifest = manifest_path.with_suffix(".json.tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp_manifest.replace(manifest_path)
    identity = {"settings": manifest["settings"], "intervals": manifest["intervals"], "base": fp,
                "importance": importance, "options": opts_dict}
    cfg = dict(scheduler_config)
    return [ExpertJob(k, out, intervals, images, settings, cfg, identity, encoder_hidden_states,
                      labels=labels, condition_dropout=float(condition_dropout), null_label=null_label)
            for k in range(intervals.num_intervals)]


def train_one_expert(
    k: int,
    out_dir: str | Path,
    intervals: Intervals,
    images: torch.Tensor,
    settings: ExpertTrainSettings,
    scheduler_config: Mapping[str, Any],
    identity: Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    encoder_hidden_states: torch.Tensor | None = None,
    progress: bool = True,
    max_steps_this_call: int | None = None,
    labels: torch.Tensor | None = None,
    condition_dropout: float = 0.0,
    null_label: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> ExpertResult:
    """Train (or resume, or reuse) expert ``k`` from ``<out>/supernet`` into ``<out>/expert_<k>``.

    Needs :func:`prepare_expert_jobs` to have run (it writes the supernet and the identity).
    Safe to run in another process or on another machine that sees ``out_dir``. ``labels``,
    ``condition_dropout``, ``null_label``: a class-conditional base (:func:`run_training`).
    ``on_step``: called as ``on_step(k, step)`` after each step (:func:`run_training`).
    """
    out = Path(out_dir)
    final = expert_dir(out, k)
    meta_path = final / EXPERT_META
    ident = jsonable(condition_identity(identity, labels, condition_dropout, null_label))
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("identity") == ident and int(meta.get("steps", -1)) == settings.steps:
            log.info("expert %d: already trained (%d steps), reused", k, settings.steps)
            return ExpertResult(k, final, settings.steps, float(meta.get("seconds", 0.0)),
                                float(meta.get("final_loss", float("nan"))))
    student = load_supernet(out, device=device)
    teacher = student.plain_unet()  # the pretrained function (full arch), frozen
    sched = training_scheduler(scheduler_config)
    kw = {"encoder_hidden_states": encoder_hidden_states} if encoder_hidden_states is not None else None
    space = student.space
    n_random = settings.random_archs if settings.sandwich else 0

    def choose(rng: np.random.Generator) -> list[Arch]:
        return sandwich_archs(space, rng, n_random) if settings.sandwich else [space.full()]

    span = intervals.spans()[k]
    tlog = run_training(
        student, teacher, images, intervals, k, settings, sched, out / CHECKPOINTS_DIR / f"expert_{k}", ident,
        choose_archs=choose, device=device, model_kwargs=kw, progress=progress,
        desc=f"expert {k} t∈[{span[0]},{span[1]})", max_steps_this_call=max_steps_this_call, on_step=on_step,
        **({"labels": labels, "condition_dropout": condition_dropout, "null_label": null_label}
           if labels is not None else {}),
    )
    if tlog.step < settings.steps:  # time slice ended early: not final yet
        return ExpertResult(k, final, tlog.step, tlog.seconds, tlog.mean_loss())
    student.set_active(space.full())
    tmp = final.with_name(final.name + ".tmp")
    remove_tree(tmp)
    student.save_pretrained(tmp)
    meta = {"k": k, "span": list(span), "steps": tlog.step, "seconds": round(tlog.seconds, 3),
            "final_loss": tlog.mean_loss(), "final_loss_full": tlog.mean_loss("loss_full"),
            "final_loss_smallest": tlog.mean_loss("loss_smallest"), "identity": ident}
    (tmp / EXPERT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    remove_tree(final)
    tmp.rename(final)
    return ExpertResult(k, final, tlog.step, tlog.seconds, tlog.mean_loss())


def run_expert_job(job: ExpertJob, device: str | torch.device = "cpu", progress: bool = True,
                   max_steps_this_call: int | None = None) -> ExpertResult:
    """Run one :class:`ExpertJob` (the function a Ray task calls)."""
    return train_one_expert(
        job.k, job.out_dir, job.intervals, job.images, job.settings, job.scheduler_config, job.identity,
        device=device, encoder_hidden_states=job.encoder_hidden_states, progress=progress,
        max_steps_this_call=max_steps_this_call, labels=job.labels, condition_dropout=job.condition_dropout,
        null_label=job.null_label, on_step=job.on_step,
    )


def train_experts(
    base_unet: nn.Module,
    intervals: Intervals,
    images: torch.Tensor,
    settings: ExpertTrainSettings,
    out_dir: str | Path,
    *,
    scheduler_config: Mapping[str, Any],
    device: str | torch.device = "cpu",
    options: Any = None,
    importance: str = "magnitude",
    encoder_hidden_states: torch.Tensor | None = None,
    progress: bool = True,
    only: Sequence[int] | None = None,
    max_steps_this_call: int | None = None,
    run_jobs: Callable[[Sequence[ExpertJob]], Sequence[ExpertResult]] | None = None,
    labels: torch.Tensor | None = None,
    condition_dropout: float = 0.0,
    null_label: int | None = None,
) -> ExpertsResult:
    """Train one elastic expert per interval, one after another (see the module docstring).

    Args:
        base_unet: the pretrained diffusers UNet (not modified).
        intervals: the experts' intervals (``intervals.json`` of ``diffnas intervals``).
        images: training samples (N, C, H, W) in the model's input space (latents for LDMs).
        settings: :class:`ExpertTrainSettings`.
        out_dir: ``runs/<name>/experts``.
        scheduler_config: the base model's training noise schedule.
        options: :class:`~search_spaces.SpaceOptions` of the supernet (default options if None).
        importance: channel ordering of the supernet (``magnitude`` or ``none``).
        encoder_hidden_states: (1, L, D) fixed context for conditional UNets.
        only: train only these experts (the rest may be trained elsewhere).
        max_steps_this_call: see :func:`run_training`.
        run_jobs: runs the experts' :class:`ExpertJob` s elsewhere and returns their results in
            order, e.g. as Ray tasks (:func:`nas.ray_backend.run_expert_jobs_ray`), each calling
            :func:`run_expert_job`; ``None``: one after another in this process on ``device``.
        labels: (N,) class labels of ``images`` for a class-conditional base: every batch
            passes its images' labels, each replaced by ``null_label`` with probability
            ``condition_dropout`` (so guidance works with the experts); part of the experts'
            identity and manifest.
    """
    t0 = time.perf_counter()
    jobs = prepare_expert_jobs(base_unet, intervals, images, settings, out_dir, scheduler_config=scheduler_config,
                               options=options, importance=importance, encoder_hidden_states=encoder_hidden_states,
                               labels=labels, condition_dropout=condition_dropout, null_label=null_label)
    jobs = [job for job in jobs if only is None or job.k in only]
    if run_jobs is not None:
        if max_steps_this_call is not None:
            raise ValueError("max_steps_this_call applies to the sequential path only (run_jobs=None)")
        results = list(run_jobs(jobs))
    else:
        results = [run_expert_job(job, device=device, progress=progress, max_steps_this_call=max_steps_this_call)
                   for job in jobs]
    return ExpertsResult(Path(out_dir), intervals, tuple(results), time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# the experts' table: elastic experts vs the base model pruned to the same arch


@dataclass(frozen=True)
class ExpertTableRow:
    """Held-out denoising loss on interval ``k`` at one arch (see :func:`expert_table`).

    Attributes:
        k, span: the interval.
        arch: the arch's name (``smallest``, ``width 0.5``, ...); ``macs_ratio`` its MACs / full.
        base_full: the pretrained model (full arch).
        base_pruned: the pretrained model pruned to ``arch`` without any fine-tuning.
        expert_pruned: the interval's elastic expert at ``arch``.
        expert_full: the expert at the full arch.
    """

    k: int
    span: tuple[int, int]
    arch: str
    macs_ratio: float
    base_full: float
    base_pruned: float
    expert_pruned: float
    expert_full: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def expert_table(
    out_dir: str | Path,
    heldout: Any,
    scheduler_config: Mapping[str, Any],
    *,
    archs: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | torch.device = "cpu",
    model_kwargs: Mapping[str, Any] | None = None,
) -> list[ExpertTableRow]:
    """Per interval and arch: held-out loss of each expert vs the base model pruned to that arch.

    ``archs`` defaults to ``{"smallest": smallest, "width 0.5": uniform(0.5)}``. The base
    model pruned without fine-tuning is the untrained supernet (``<out>/supernet``) at the arch:
    the same channels the expert keeps.
    """
    from experts.losses import proxy_loss

    start = load_supernet(out_dir, device=device)
    intervals, experts = load_experts(out_dir, device=device)
    n = intervals.num_intervals
    space = start.space
    if archs is None:
        archs = {"smallest": space.smallest(), "width 0.5": space.uniform(0.5)}
    sched = training_scheduler(scheduler_config)

    def losses(models: Any, arch: Mapping[str, Any]) -> tuple[float, ...]:
        return proxy_loss(models, [Arch(arch)] * n, heldout, sched, model_kwargs=model_kwargs).per_interval

    base_full = losses(start, space.full())
    expert_full = losses(experts, space.full())
    rows = []
    for name, arch in archs.items():
        base_p = losses(start, arch)
        exp_p = losses(experts, arch)
        ratio = space.macs(arch) / space.macs(space.full())
        for k in range(n):
            rows.append(ExpertTableRow(k, tuple(intervals.spans()[k]), name, round(ratio, 4), base_full[k],
                                       base_p[k], exp_p[k], expert_full[k]))
    return rows


def format_expert_table(rows: Sequence[ExpertTableRow]) -> str:
    """A Markdown table of :func:`expert_table` rows."""
    header = ("interval", "timesteps", "arch", "MACs ratio", "base (full)", "base pruned, no fine-tuning",
              "expert at arch", "expert (full)", "expert / pruned base")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = (str(r.k), f"[{r.span[0]}, {r.span[1]})", r.arch, f"{r.macs_ratio:.3f}", f"{r.base_full:.4f}",
                 f"{r.base_pruned:.4f}", f"{r.expert_pruned:.4f}", f"{r.expert_full:.4f}",
                 f"{r.expert_pruned / r.base_pruned:.3f}" if r.base_pruned > 0 else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
