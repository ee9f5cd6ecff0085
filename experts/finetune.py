"""Fine-tuning the pruned experts of an allocation, at a fixed cost per expert.

:func:`finetune_allocation` (what ``diffnas finetune --allocation PATH`` calls): for each
interval ``k``, materialise the expert at ``allocation.archs[k]`` (a plain, physically smaller
diffusers UNet), train it on interval ``k``'s timesteps with the loss of the elastic stage
(denoising + ``distill_weight`` x MSE to the frozen pretrained model) for exactly
``settings.steps`` AdamW steps of ``settings.batch_size`` images, and save the mixture of the
fine-tuned experts as a :class:`~experts.pipeline.MixturePipeline` folder
(``runs/<name>/mixtures/<method>-<budget>/``); an allocation's step schedule goes with it, so
the pipeline samples along it by default. The budget (steps x batch per expert) is the
same for every allocation method, so methods are compared at equal fine-tuning cost; it is
recorded in ``finetune.json`` and in the mixture's info.

Resumable like the elastic stage: checkpoints in ``<out>/checkpoints/expert_<k>/`` (weights and
AdamW state in safetensors, step and RNG state in JSON); a rerun continues; a finished folder
(``finetune.json`` present, same settings) is reused. Checkpoints are deleted once the mixture
is saved (``keep_checkpoints=True`` keeps them).

One task per expert (``experts_only``): the experts of one mixture are independent (each trains
on its own interval from its own seeded generators, :func:`~experts.train_loop.run_training`), so
a call with ``experts_only=(k,)`` fine-tunes expert ``k`` alone and stores its finished weights
and held-out losses in ``<out>/tuned/expert_<k>/`` (a temp sibling folder, then rename: the
commit point); the mixture is not saved. A later call for the whole allocation loads every stored
expert of the same identity instead of training it, trains what is missing and saves the mixture:
on the CPU with the same threads its weights are those of one call for everything, bit for bit.
:func:`split_experts` names the experts worth a task of their own.

Example::

    >>> from experts.finetune import finetune_allocation
    >>> res = finetune_allocation(Allocation.load("runs/demo/allocations/router-0.5.json"),
    ...                           "runs/demo/experts", images, ExpertTrainSettings(steps=200),
    ...                           "runs/demo/mixtures/router-0.5",
    ...                           scheduler_config=base.scheduler_config)  # doctest: +SKIP
    >>> res.loss_before, res.loss_after  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experts.allocation import Allocation
from experts.denoising import training_scheduler
from experts.losses import HeldOutSet
from experts.mixture import MixtureOfExperts
from experts.checkpoint import jsonable
from experts.train_loop import ExpertTrainSettings, condition_identity
from experts.expert_folder import CHECKPOINTS_DIR, load_experts, load_supernet, reading_artefact
from experts._finetune_loops import (
    TUNED_DIR,
    TUNED_INFO,
    distill_experts,
    finetune_experts,
    trajectory_plan,
)
from search_spaces.errors import UserError
from search_spaces.materialize import drop_source_paths

log = logging.getLogger(__name__)

__all__ = ["FINETUNE_FILE", "TUNED_DIR", "FinetuneResult", "finetune_allocation", "split_experts",
           "tuned_expert_done"]

FINETUNE_FILE = "finetune.json"


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune_allocation` produced.

    Attributes:
        out_dir: the mixture pipeline folder.
        steps_per_expert, batch_size: the fine-tuning budget of every expert.
        seconds: wall time of all experts' training (all calls together).
        loss_before, loss_after: held-out denoising loss of each interval's materialised
            expert before and after fine-tuning (empty without a held-out set).
        macs_per_expert: MACs of one call of each fine-tuned expert.
    """

    out_dir: Path
    steps_per_expert: int
    batch_size: int
    seconds: float
    loss_before: tuple[float, ...]
    loss_after: tuple[float, ...]
    macs_per_expert: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir), "steps_per_expert": self.steps_per_expert, "batch_size": self.batch_size,
            "images_per_expert": self.steps_per_expert * self.batch_size, "seconds": round(self.seconds, 3),
            "loss_before": list(self.loss_before), "loss_after": list(self.loss_after),
            "macs_per_expert": list(self.macs_per_expert),
        }


def finetune_allocation(
    allocation: Allocation,
    experts: str | Path | nn.Module | Sequence[nn.Module],
    images: torch.Tensor,
    settings: ExpertTrainSettings,
    out_dir: str | Path,
    *,
    scheduler_config: Mapping[str, Any],
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
    heldout: HeldOutSet | None = None,
    vae: nn.Module | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    sampler_scheduler: Any = None,
    progress: bool = True,
    max_steps_this_call: int | None = None,
    keep_checkpoints: bool = False,
    labels: torch.Tensor | None = None,
    condition_dropout: float = 0.0,
    null_label: int | None = None,
    target: str = "denoise",
    timesteps: Sequence[int] | None = None,
    reference_timesteps: Sequence[int] | None = None,
    experts_only: Sequence[int] | None = None,
) -> FinetuneResult:
    """Materialise each expert at its arch, fine-tune it on its interval, save the mixture.

    Args:
        allocation: one arch per interval (router, search, uniform, static...).
        experts: the experts folder of ``diffnas train-experts``, one supernet per interval, or
            one supernet shared by all intervals (e.g. the base model's, for static pruning).
        images: training samples (N, C, H, W) (latents for latent models).
        settings: the budget (``steps`` x ``batch_size`` per expert) and optimiser settings;
            ``sandwich`` and ``random_archs`` are ignored (one fixed arch per expert).
        out_dir: the mixture folder, ``runs/<name>/mixtures/<method>-<budget>``.
        scheduler_config: the base model's training noise schedule.
        teacher: frozen model for distillation; default: the experts folder's untrained
            supernet (the pretrained model) when ``experts`` is a folder, else none.
        heldout: if given, each expert's held-out loss is measured before and after.
        vae: stored in the pipeline for latent models.
        sampler_scheduler: the scheduler stored in the pipeline (default DDIM from the
            training schedule).
        max_steps_this_call: stop every expert after this many steps of this call (the state
            is checkpointed; a later call continues and only then saves the mixture).
        labels, condition_dropout, null_label: a class-conditional model: the (N,) classes of
            ``images``, passed with every batch (each replaced by ``null_label`` with probability
            ``condition_dropout``, see :func:`~experts.train_loop.run_training`); the held-out
            loss uses the held-out set's own labels. Part of the mixture's identity.
        target: ``"denoise"`` (the elastic stage's loss, above) or ``"trajectory"``: every
            interval's expert, the base-served ones included (from the base weights), learns to
            make the mixture's DDIM steps land where the teacher's ``reference_timesteps``
            sampler lands (:mod:`experts.schedule_distill`); needs a DDIM ``sampler_scheduler``.
        timesteps: the steps the mixture samples along when the allocation has no schedule
            (``"trajectory"`` only).
        reference_timesteps: the teacher's sampler (``"trajectory"`` only), e.g. the 50-step grid.
        experts_only: fine-tune only these intervals' experts, each stored in
            ``<out>/tuned/expert_<k>/`` (reused when already there); the mixture is not saved and
            the result holds these experts' losses only (no ``macs_per_expert``). A finished
            mixture folder is reused as for a whole call.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    n = allocation.intervals.num_intervals
    source = _experts_source(experts, out)
    supernets, teacher = _resolve_experts(experts, allocation, teacher, device)
    identity = {"settings": jsonable(settings.identity()), "steps": settings.steps,
                "archs": [a.to_dict() for a in allocation.archs], "intervals": allocation.intervals.to_dict(),
                "experts": source, "distill": teacher is not None}
    if allocation.schedule is not None:  # the saved mixture samples along it: another schedule is another mixture
        identity["schedule"] = allocation.schedule.to_dict()
    cond = {} if labels is None else {"labels": labels, "condition_dropout": condition_dropout, "null_label": null_label}
    if cond and target != "denoise":
        raise UserError(f"fine-tuning target {target!r} does not take class labels yet; use the denoise target "
                        "for a class-conditional model")
    identity = condition_identity(identity, labels, condition_dropout, null_label)  # unchanged without labels
    traj = None
    if target == "trajectory":
        sampler_scheduler = sampler_scheduler if sampler_scheduler is not None else _default_sampler(scheduler_config)
        traj = trajectory_plan(allocation, teacher, sampler_scheduler, timesteps, reference_timesteps)
        identity["target"] = {"name": target, "timesteps": traj[0], "reference": traj[1]}
    elif target != "denoise":
        raise UserError(f"unknown fine-tuning target {target!r}; choices: denoise, trajectory")
    if allocation.base_intervals:
        identity["base_intervals"] = list(allocation.base_intervals)
        if teacher is None:
            raise UserError(f"the allocation serves intervals {list(allocation.base_intervals)} by the base model: "
                            "give the experts folder (whose pretrained model is the base) or teacher=")
    marker = out / FINETUNE_FILE
    if marker.is_file():
        return _reuse_finished(marker, identity, out)
    sched = training_scheduler(scheduler_config)
    kw = {"encoder_hidden_states": encoder_hidden_states} if encoder_hidden_states is not None else None
    run = finetune_experts if traj is None else distill_experts
    extra = {} if traj is None else {"plan": traj, "sampler": sampler_scheduler}
    only = None if experts_only is None else frozenset(int(k) for k in experts_only)
    if only is not None and not only <= set(range(n)):
        raise ValueError(f"experts_only {sorted(only)}: the allocation has intervals 0..{n - 1}")
    tuned, before, after, seconds, finished = run(
        allocation, supernets, teacher, images, settings, sched, out, identity, device=device, kw=kw,
        heldout=heldout, progress=progress, max_steps_this_call=max_steps_this_call, only=only, **extra,
        **({"cond": cond} if cond else {}))
    if only is not None:
        return FinetuneResult(out, settings.steps, settings.batch_size, seconds, tuple(before), tuple(after), ())
    if not finished:
        log.info("fine-tuning paused by max_steps_this_call; rerun to continue")
        return FinetuneResult(out, settings.steps, settings.batch_size, seconds, tuple(before), tuple(after), ())
    mixture = _save_mixture(allocation, tuned, settings, seconds, source, scheduler_config, sampler_scheduler, vae,
                            out)
    result = FinetuneResult(out, settings.steps, settings.batch_size, seconds, tuple(before), tuple(after),
                            tuple(mixture.macs_per_expert()))
    _mark_finished(marker, identity, result, allocation, keep_checkpoints)
    log.info("fine-tuned %d experts (%d steps x %d images each) in %.1f s -> %s", n, settings.steps,
             settings.batch_size, time.perf_counter() - t0, out)
    return result


def _mark_finished(marker: Path, identity: Mapping[str, Any], result: FinetuneResult, allocation: Allocation,
                   keep_checkpoints: bool) -> None:
    """Write the marker that makes a rerun reuse this mixture; drop the checkpoints unless kept."""
    tmp = marker.with_suffix(".json.tmp")
    stored = {k: v for k, v in result.to_dict().items() if k != "out_dir"}  # run folders hold no absolute paths
    tmp.write_text(json.dumps({"identity": jsonable(identity), "result": stored,
                               "allocation": allocation.to_dict()}, indent=2, sort_keys=True))
    tmp.replace(marker)
    out = marker.parent
    for made in (CHECKPOINTS_DIR, TUNED_DIR):
        if not keep_checkpoints and (out / made).exists():
            shutil.rmtree(out / made)


def split_experts(allocation: Allocation, target: str = "denoise") -> tuple[int, ...]:
    """The intervals whose expert :func:`finetune_allocation` trains (each worth a task of its own
    with ``experts_only``): with ``denoise`` those not served by the base model; with
    ``trajectory`` every interval (base-served ones learn too).

    Example:
        >>> from experts.intervals import Intervals
        >>> a = Allocation("x", 0.5, Intervals(1000, (500,)), ({}, {}), (1, 1), (5, 5), 10, base_intervals=(0,))
        >>> split_experts(a), split_experts(a, "trajectory")
        ((1,), (0, 1))
    """
    n = allocation.intervals.num_intervals
    if target == "denoise":
        return tuple(k for k in range(n) if k not in allocation.base_intervals)
    return tuple(range(n))


def tuned_expert_done(out_dir: str | Path, k: int) -> bool:
    """Whether ``out_dir`` (a mixture folder) holds expert ``k``'s stored result (its identity is
    checked when it is loaded), or the finished mixture."""
    out = Path(out_dir)
    return (out / FINETUNE_FILE).is_file() or (out / TUNED_DIR / f"expert_{int(k)}" / TUNED_INFO).is_file()


def _resolve_experts(experts: str | Path | nn.Module | Sequence[nn.Module], allocation: Allocation,
                     teacher: nn.Module | None, device: str | torch.device) -> tuple[list[Any], nn.Module | None]:
    """One supernet per interval and the teacher (the folder's pretrained model unless given)."""
    n = allocation.intervals.num_intervals
    if isinstance(experts, (str, Path)):
        intervals, supernets = load_experts(experts, device=device)
        if intervals != allocation.intervals:
            raise UserError(
                f"the allocation's intervals {list(allocation.intervals.boundaries)} differ from the experts' "
                f"{list(intervals.boundaries)} in {experts}"
            )
        if teacher is None:
            teacher = load_supernet(experts, device=device).plain_unet()
    elif isinstance(experts, nn.Module):
        supernets = [experts] * n
    else:
        supernets = list(experts)
    if len(supernets) != n:
        raise ValueError(f"got {len(supernets)} experts for {n} intervals")
    return supernets, teacher


def _experts_source(experts: Any, out: Path) -> str:
    """Where the experts are, as stored in ``finetune.json``: relative to the mixture folder (so a
    copied, moved or differently mounted run still matches), "in-memory" for modules.

    Example:
        >>> _experts_source("runs/x/experts", Path("runs/x/mixtures/router-0.5"))
        '../../experts'
    """
    if not isinstance(experts, (str, Path)):
        return "in-memory"
    return Path(os.path.relpath(Path(experts).resolve(), Path(out).resolve())).as_posix()


def _same_source(stored: Any, source: str, out: Path) -> bool:
    """Whether a stored experts source names ``source``; an absolute path (files written before
    sources were relative) matches when its tail is the same relative location.

    Example:
        >>> _same_source("/old/root/runs/x/experts", "../../experts", Path("/new/runs/x/mixtures/m"))
        True
        >>> _same_source("/old/root/runs/x/other", "../../experts", Path("/new/runs/x/mixtures/m"))
        False
    """
    if not isinstance(stored, str) or stored == source:
        return stored == source
    if not os.path.isabs(stored) or source == "in-memory":
        return False
    rel = Path(source).parts
    ups = sum(1 for part in rel if part == "..")
    tail = rel[ups:]
    old = Path(stored).parts
    if not tail or len(old) < len(tail):
        return False
    return old[-len(tail):] == tail


def _reuse_finished(marker: Path, identity: Mapping[str, Any], out: Path) -> FinetuneResult:
    """The stored result if ``marker`` records the same identity; UserError otherwise."""
    with reading_artefact(marker, f"delete {out} and run `diffnas finetune` again for it"):
        done = json.loads(marker.read_text())
        if not isinstance(done, dict):
            raise ValueError(f"expected a JSON object, got {type(done).__name__}")
    stored = done.get("identity")
    wanted = jsonable(identity)
    if isinstance(stored, dict) and _same_source(stored.get("experts"), wanted.get("experts"), out):
        stored = {**stored, "experts": wanted.get("experts")}
    if stored == wanted:
        log.info("%s: already fine-tuned with these settings, reused", out)
        r = done["result"]
        return FinetuneResult(out, int(r["steps_per_expert"]), int(r["batch_size"]), float(r["seconds"]),
                              tuple(r["loss_before"]), tuple(r["loss_after"]), tuple(r["macs_per_expert"]))
    raise UserError(f"{out} holds a mixture fine-tuned with other settings; delete it or choose another folder")


def _save_mixture(allocation: Allocation, tuned: list[nn.Module], settings: ExpertTrainSettings, seconds: float,
                  source: str, scheduler_config: Mapping[str, Any], sampler_scheduler: Any, vae: nn.Module | None,
                  out: Path) -> MixtureOfExperts:
    """Save the fine-tuned experts as a MixturePipeline folder (DDIM sampler by default)."""
    from experts.pipeline import MixturePipeline

    info = {"finetune": {"steps_per_expert": settings.steps, "batch_size": settings.batch_size,
                         "images_per_expert": settings.steps * settings.batch_size,
                         "learning_rate": settings.learning_rate, "distill_weight": settings.distill_weight,
                         "seconds": round(seconds, 3), "experts": source}}
    mixture = MixtureOfExperts(allocation.intervals, tuned, None, allocation, info)
    if sampler_scheduler is None:
        sampler_scheduler = _default_sampler(scheduler_config)
    pipe = MixturePipeline(mixture, sampler_scheduler, vae)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out))
    drop_source_paths(out)  # a latent base's vae/ names the folder it was loaded from
    return mixture


def _default_sampler(scheduler_config: Mapping[str, Any]) -> Any:
    """DDIM on the training noise schedule: the sampler of a mixture saved without one."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config({k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")})
