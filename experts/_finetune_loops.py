"""The per-expert loops of :func:`experts.finetune.finetune_allocation`: fine-tuning each
interval's expert on its own interval (:func:`finetune_experts`) or distilling it along the
mixture's schedule (:func:`distill_experts`), both through one loop (:func:`_tune_each`) that
measures the held-out loss before and after and stores or reuses the result of an
``experts_only`` call per expert (``<mixture>/tuned/expert_<k>/``, written then renamed)."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experts.allocation import Allocation
from experts.checkpoint import jsonable
from experts.expert_folder import CHECKPOINTS_DIR
from experts.losses import HeldOutSet, proxy_loss
from experts.train_loop import ExpertTrainSettings, run_training
from search_spaces.base import Arch
from search_spaces.errors import UserError

log = logging.getLogger("experts.finetune")

#: Per-expert results of ``experts_only`` calls (inside the mixture folder; removed with the checkpoints).
TUNED_DIR = "tuned"
_TUNED_WEIGHTS = "model.safetensors"
TUNED_INFO = "expert.json"

#: (tuned experts, held-out losses before, after, training seconds, every expert finished)
TuneResult = tuple[list[nn.Module], list[float], list[float], float, bool]


def _heldout_loss(model: nn.Module, heldout: HeldOutSet, k: int, sched: Any, kw: Mapping[str, Any] | None) -> float:
    models: list[Any] = [model] * heldout.intervals.num_intervals
    return proxy_loss(models, None, _only(heldout, k), sched, model_kwargs=kw).per_interval[k]


def _only(heldout: HeldOutSet, k: int) -> HeldOutSet:
    """The held-out set with every interval but ``k`` reduced to one sample (cheap)."""
    return HeldOutSet(heldout.intervals,
                      tuple(x if j == k else x[:1] for j, x in enumerate(heldout.x0)),
                      tuple(x if j == k else x[:1] for j, x in enumerate(heldout.noise)),
                      tuple(x if j == k else x[:1] for j, x in enumerate(heldout.t)), heldout.seed,
                      None if heldout.labels is None else
                      tuple(y if j == k else y[:1] for j, y in enumerate(heldout.labels)))


def _load_tuned(out: Path, identity: Mapping[str, Any], k: int) -> dict[str, Any] | None:
    """Expert ``k``'s stored result (``info`` and ``state`` on the CPU) if stored for ``identity``."""
    from safetensors.torch import load_file

    folder = out / TUNED_DIR / f"expert_{k}"
    try:
        info = json.loads((folder / TUNED_INFO).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("identity") != jsonable({**identity, "k": k}):
        log.info("%s was stored for other settings: trained again", folder)
        return None
    return {"info": info, "state": load_file(str(folder / _TUNED_WEIGHTS))}


def _store_tuned(out: Path, identity: Mapping[str, Any], k: int, model: nn.Module, before: float | None,
                 after: float | None, seconds: float) -> None:
    """Expert ``k``'s weights and losses in ``<out>/tuned/expert_<k>/``: written in a temp sibling
    folder, then renamed (a reader sees the whole result or none)."""
    from safetensors.torch import save_file

    final = out / TUNED_DIR / f"expert_{k}"
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.mkdir(parents=True)
    state = {name: t.detach().cpu().clone().contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(tmp / _TUNED_WEIGHTS))
    (tmp / TUNED_INFO).write_text(json.dumps({"identity": jsonable({**identity, "k": k}), "loss_before": before,
                                               "loss_after": after, "seconds": seconds}, indent=1, sort_keys=True))
    if final.exists():  # stale (other settings) or a twin task's: the newest result wins
        shutil.rmtree(final, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:  # a twin task renamed its own copy first: the same weights
        shutil.rmtree(tmp, ignore_errors=True)


def _use_tuned(stored: dict[str, Any], model: nn.Module, heldout: HeldOutSet | None, k: int, sched: Any,
               kw: Mapping[str, Any] | None, before: list[float], after: list[float]) -> float:
    """Load a stored expert into ``model`` (its losses appended; measured when stored without);
    returns its training seconds."""
    info = stored["info"]
    if heldout is not None:
        b = info.get("loss_before")
        before.append(float(b) if b is not None else _heldout_loss(model, heldout, k, sched, kw))
    model.load_state_dict(stored["state"], strict=True)
    model.eval().requires_grad_(False)
    if heldout is not None:
        a = info.get("loss_after")
        after.append(float(a) if a is not None else _heldout_loss(model, heldout, k, sched, kw))
    return float(info.get("seconds") or 0.0)


def _tune_each(allocation: Allocation, out: Path, identity: Mapping[str, Any], *, heldout: HeldOutSet | None,
               sched: Any, kw: Mapping[str, Any] | None, only: frozenset[int] | None,
               make: Callable[[int], tuple[nn.Module, bool]],
               train: Callable[[int, nn.Module], tuple[float, bool]]) -> TuneResult:
    """Each interval's expert in turn (just ``only``'s, each stored once finished, when given).

    ``make(k)`` gives the model and whether it trains (False: the base model itself, kept as it
    is); ``train(k, model)`` trains it in place and gives (seconds, finished). A result stored for
    the same identity by an ``experts_only`` call is loaded instead of trained.
    """
    tuned: list[nn.Module] = []
    before: list[float] = []
    after: list[float] = []
    seconds, finished = 0.0, True
    for k in range(allocation.intervals.num_intervals):
        if only is not None and k not in only:
            continue
        model, trains = make(k)
        if not trains:
            if heldout is not None:
                before.append(_heldout_loss(model, heldout, k, sched, kw))
                after.append(before[-1])
            tuned.append(model)
            continue
        stored = _load_tuned(out, identity, k)
        if stored is not None:
            seconds += _use_tuned(stored, model, heldout, k, sched, kw, before, after)
            tuned.append(model)
            continue
        if heldout is not None:
            before.append(_heldout_loss(model, heldout, k, sched, kw))
        seconds_k, done_k = train(k, model)
        seconds += seconds_k
        finished = finished and done_k
        model.eval().requires_grad_(False)
        if heldout is not None:
            after.append(_heldout_loss(model, heldout, k, sched, kw))
        if only is not None and done_k:
            _store_tuned(out, identity, k, model, before[-1] if heldout is not None else None,
                         after[-1] if heldout is not None else None, seconds_k)
        tuned.append(model)
    return tuned, before, after, seconds, finished


def finetune_experts(allocation: Allocation, supernets: Sequence[Any], teacher: nn.Module | None,
                     images: torch.Tensor, settings: ExpertTrainSettings, sched: Any, out: Path,
                     identity: Mapping[str, Any], *, device: str | torch.device, kw: Mapping[str, Any] | None,
                     heldout: HeldOutSet | None, progress: bool, max_steps_this_call: int | None,
                     cond: Mapping[str, Any] | None = None, only: frozenset[int] | None = None) -> TuneResult:
    """Materialise and fine-tune each interval's expert on its own interval (the base model itself,
    where the allocation keeps it, is not trained)."""

    def make(k: int) -> tuple[nn.Module, bool]:
        if k in allocation.base_intervals:  # the base model itself: nothing pruned, nothing to fine-tune
            return copy.deepcopy(teacher).to(device).eval().requires_grad_(False), False
        return supernets[k].materialize(Arch(allocation.archs[k])).to(device), True

    def train(k: int, model: nn.Module) -> tuple[float, bool]:
        span = allocation.intervals.spans()[k]
        tlog = run_training(
            model, teacher, images, allocation.intervals, k, settings, sched,
            out / CHECKPOINTS_DIR / f"expert_{k}", {**identity, "k": k},
            choose_archs=None, device=device, model_kwargs=kw, progress=progress,
            desc=f"finetune {k} t∈[{span[0]},{span[1]})", max_steps_this_call=max_steps_this_call, **(cond or {}),
        )
        return tlog.seconds, tlog.step >= settings.steps

    return _tune_each(allocation, out, identity, heldout=heldout, sched=sched, kw=kw, only=only,
                      make=make, train=train)


def trajectory_plan(allocation: Allocation, teacher: nn.Module | None, sampler: Any,
                     timesteps: Sequence[int] | None, reference: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(the mixture's timesteps, the teacher's reference timesteps), both descending; UserError
    when trajectory distillation cannot run (no teacher, no DDIM sampler, no schedule)."""
    from diffusers import DDIMScheduler

    if teacher is None:
        raise UserError("trajectory fine-tuning needs the base model as teacher: give the experts folder or teacher=")
    if not isinstance(sampler, DDIMScheduler):
        raise UserError(f"trajectory fine-tuning follows DDIM steps; the sampler is {type(sampler).__name__}: "
                        "set sampling.sampler=ddim or the fine-tuning target to denoise")
    ts = allocation.timesteps()
    ts = list(timesteps) if ts is None and timesteps is not None else ts
    if not ts or not reference:
        raise UserError("trajectory fine-tuning needs the mixture's timesteps and the reference sampler's")
    return sorted({int(t) for t in ts}, reverse=True), sorted({int(t) for t in reference}, reverse=True)


def distill_experts(allocation: Allocation, supernets: Sequence[Any], teacher: nn.Module, images: torch.Tensor,
                    settings: ExpertTrainSettings, sched: Any, out: Path, identity: Mapping[str, Any], *,
                    device: str | torch.device, kw: Mapping[str, Any] | None, heldout: HeldOutSet | None,
                    progress: bool, max_steps_this_call: int | None, plan: tuple[list[int], list[int]],
                    sampler: Any, only: frozenset[int] | None = None) -> TuneResult:
    """Each interval's expert (a copy of the base where the allocation keeps it) distilled along the
    mixture's schedule (:func:`experts.schedule_distill.distill_along_schedule`); an interval the
    schedule skips keeps its expert as it is."""
    from experts.schedule_distill import DistillSettings, ScheduleTeacher, distill_along_schedule

    timesteps, reference = plan
    teacher = teacher.to(device).eval().requires_grad_(False)
    guide = ScheduleTeacher(teacher, sampler, timesteps, reference=reference)
    dset = DistillSettings(steps=settings.steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                           weight_decay=settings.weight_decay, grad_clip=settings.grad_clip,
                           checkpoint_every=settings.checkpoint_every, seed=settings.seed)

    def make(k: int) -> tuple[nn.Module, bool]:
        if k in allocation.base_intervals:
            return copy.deepcopy(teacher).requires_grad_(True), True
        return supernets[k].materialize(Arch(allocation.archs[k])).to(device), True

    def train(k: int, model: nn.Module) -> tuple[float, bool]:
        mine = [t for t in timesteps if allocation.intervals.index(t) == k]
        if not mine:
            return 0.0, True
        span = allocation.intervals.spans()[k]
        dlog = distill_along_schedule(
            model, guide, images, mine, dset, out / CHECKPOINTS_DIR / f"expert_{k}", {**identity, "k": k},
            stream=k, device=device, model_kwargs=kw, progress=progress,
            desc=f"distil {k} t∈[{span[0]},{span[1]})", max_steps_this_call=max_steps_this_call)
        return dlog.seconds, dlog.step >= settings.steps

    return _tune_each(allocation, out, identity, heldout=heldout, sched=sched, kw=kw, only=only,
                      make=make, train=train)
