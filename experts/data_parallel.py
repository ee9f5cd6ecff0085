"""One expert trained data-parallel over several workers (GPUs or CPU processes) with torch.distributed.

Each of ``world`` workers (one process each, joined in a ``torch.distributed`` process group:
``gloo`` on the CPU, ``nccl`` on CUDA) runs the same steps as :func:`experts.train_loop.run_training`
on its shard of every global batch:

- every worker draws the *same* global batch, timesteps, noise and sub-networks from the same
  seeded generators (so nothing random is communicated), then keeps rows
  ``[rank * B / world, (rank + 1) * B / world)`` of the batch (``experts.batch_size`` = B, the
  global batch, must be a multiple of ``world``);
- after the sandwich rule's backward passes the gradients are averaged over the workers with one
  all-reduce (what ``DistributedDataParallel`` does; done by hand because a supernet step runs
  several forward/backward passes, one per sub-network, before one optimiser step), then
  clipped and applied identically on every worker;
- the logged losses are averaged over the workers too: the loss curve is that of one worker with
  the same global batch, within float rounding (the mean of equal shards' means is the batch mean).

Rank 0 writes the checkpoints (``experts/checkpoints/expert_<k>/``, the sequential path's
format: a data-parallel run resumes a sequential checkpoint and the reverse) and, at the end,
the expert folder through :func:`experts.training.train_one_expert` itself (resumed at the final
step, it trains nothing and writes the expert exactly as the sequential path does).

This module never imports ray: :mod:`nas.ray_backend` starts the workers
(:func:`nas.ray_backend.run_expert_job_data_parallel`), and any other launcher (``torchrun``,
``torch.multiprocessing``) can call :func:`train_expert_data_parallel` in each process once the
process group is initialised.

Example::

    >>> from experts.denoising import LossBatch
    >>> b = LossBatch(torch.arange(8.).view(4, 2), torch.zeros(4, 2), torch.arange(4), None)
    >>> shard_batch(b, rank=1, world=2).t.tolist()
    [2, 3]
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from experts.checkpoint import jsonable, recover_checkpoint, save_checkpoint
from experts.denoising import LossBatch, make_batch, training_scheduler
from experts.expert_folder import CHECKPOINTS_DIR, EXPERT_META, expert_dir, load_supernet
from experts.train_loop import (
    ExpertTrainSettings,
    TrainLog,
    backward_archs,
    prepare_step_inputs,
    resume_training,
    StepInputs,
    teacher_output,
    condition_identity,
    sandwich_archs,
)
from experts.training import ExpertJob, ExpertResult, train_one_expert
from search_spaces.errors import UserError

__all__ = ["check_data_parallel", "run_training_data_parallel", "shard_batch", "train_expert_data_parallel"]

log = logging.getLogger(__name__)


def check_data_parallel(batch_size: int, world: int) -> None:
    """Raise :class:`UserError` unless ``world`` workers can split a global batch of ``batch_size``.

    Example:
        >>> check_data_parallel(32, 4)
        >>> check_data_parallel(30, 4)
        Traceback (most recent call last):
        ...
        search_spaces.errors.UserError: experts.batch_size=30 (the global batch) is not a multiple of experts.data_parallel_workers=4: every worker takes an equal shard; use a batch size such as 32
    """
    if world < 1:
        raise UserError(f"experts.data_parallel_workers must be >= 1, got {world}")
    if batch_size % world:
        nearest = max(world, round(batch_size / world) * world)
        raise UserError(
            f"experts.batch_size={batch_size} (the global batch) is not a multiple of "
            f"experts.data_parallel_workers={world}: every worker takes an equal shard; use a batch size such as {nearest}"
        )


def shard_batch(batch: LossBatch, rank: int, world: int) -> LossBatch:
    """Rows ``[rank * B / world, (rank + 1) * B / world)`` of every tensor of ``batch`` (B rows)."""
    n = len(batch)
    check_data_parallel(n, world)
    lo, hi = rank * n // world, (rank + 1) * n // world
    cond = None if batch.cond is None else {key: v[lo:hi] for key, v in batch.cond.items()}
    return LossBatch(batch.x0[lo:hi], batch.noise[lo:hi], batch.t[lo:hi], cond)  # (B/world, C, H, W), ...


def _all_reduce_mean(tensors: list[torch.Tensor], world: int) -> None:
    """Average ``tensors`` over the process group in place, with one all-reduce of a flat buffer."""
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])  # (sum of numels,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def _data_parallel_step(s: StepInputs, rank: int, world: int) -> dict[str, float]:
    """One optimiser step on this worker's shard of the global batch; gradients and losses averaged
    over the workers (the draws are those of :func:`experts.train_loop._train_step`)."""
    labels = getattr(s, "labels", None)
    label_kw = {} if labels is None or getattr(labels, "labels", None) is None else {
        "labels": labels.labels, "condition_dropout": labels.dropout, "null_label": labels.null_label}
    batch = make_batch(s.images, s.intervals, s.k, s.settings.batch_size, s.gen, **label_kw)  # global (B, ...)
    shard = shard_batch(batch, rank, world).to(s.device)  # (B/world, ...)
    archs = list(s.choose_archs(s.rng)) if s.choose_archs is not None else [None]
    teacher_out = teacher_output(s, shard)
    s.opt.zero_grad(set_to_none=True)
    record = backward_archs(s, archs, shard, teacher_out)
    _all_reduce_mean([p.grad for p in s.params if p.grad is not None], world)  # same archs: same grads exist
    keys = list(record)
    values = torch.tensor([record[key] for key in keys], dtype=torch.float64, device=s.device)
    _all_reduce_mean([values], world)
    if s.settings.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(s.params, s.settings.grad_clip)
    s.opt.step()
    if hasattr(s.student, "set_active") and hasattr(s.student, "space"):
        s.student.set_active(s.student.space.full())
    return dict(zip(keys, (float(v) for v in values.cpu())))


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def run_training_data_parallel(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    images: torch.Tensor,
    intervals: Any,
    k: int,
    settings: ExpertTrainSettings,
    noise_scheduler: Any,
    ckpt_dir: Path,
    identity: Mapping[str, Any],
    *,
    rank: int,
    world: int,
    choose_archs: Any = None,
    device: str | torch.device = "cpu",
    model_kwargs: Mapping[str, Any] | None = None,
    desc: str = "expert",
    max_steps_this_call: int | None = None,
) -> TrainLog:
    """:func:`experts.train_loop.run_training` (unlabelled images) on ``world`` workers: call it in
    every worker of an initialised process group (``world`` 1: no group needed). Rank 0 writes the
    checkpoints, which every rank resumes from."""
    check_data_parallel(settings.batch_size, world)
    ident = jsonable(condition_identity(identity, None, 0.0, None))
    inputs = prepare_step_inputs(student, teacher, images, intervals, k, settings, noise_scheduler, choose_archs,
                      torch.device(device), model_kwargs)
    if rank == 0:
        recover_checkpoint(ckpt_dir)
    _barrier(world)
    step, losses, seconds = resume_training(ckpt_dir, ident, student, inputs.opt, inputs.gen, inputs.rng, settings.steps, desc)
    end = settings.steps if max_steps_this_call is None else min(settings.steps, step + int(max_steps_this_call))
    student.train()
    t_start = time.perf_counter()

    def save() -> None:
        if rank == 0:
            state = {"step": step, "identity": ident, "losses": losses,
                     "seconds": seconds + time.perf_counter() - t_start}
            save_checkpoint(ckpt_dir, student, inputs.opt, inputs.gen, inputs.rng, state)
        _barrier(world)

    try:
        while step < end:
            record = _data_parallel_step(inputs, rank, world)
            if not all(math.isfinite(v) for v in record.values()):
                raise FloatingPointError(f"{desc}: non-finite loss at step {step + 1} ({record}); lower the learning rate")
            step += 1
            losses.append({"step": step, **{key: round(v, 6) for key, v in record.items()}})
            if step % settings.checkpoint_every == 0 and step < end:
                save()
            if rank == 0 and step % max(1, settings.steps // 10) == 0:
                log.info("%s: step %d/%d loss %.4f (%d workers)", desc, step, settings.steps, record["loss"], world)
        save()
    finally:
        student.eval()
    return TrainLog(step, tuple(losses), seconds + time.perf_counter() - t_start)


def train_expert_data_parallel(job: ExpertJob, rank: int, world: int, device: str | torch.device = "cpu",
                               max_steps_this_call: int | None = None) -> ExpertResult | None:
    """Train expert ``job.k`` as worker ``rank`` of ``world`` (in an initialised process group);
    rank 0 returns the :class:`ExpertResult` (and writes ``expert_<k>/``), the others None.

    An expert already trained is reused (rank 0 reports it; the others return at once).
    """
    if job.labels is not None:
        raise UserError("experts.data_parallel_workers > 1 does not train class-conditional experts yet; "
                        "set experts.data_parallel_workers=1")
    out = Path(job.out_dir)
    ckpt_dir = out / CHECKPOINTS_DIR / f"expert_{job.k}"
    ident = jsonable(condition_identity(job.identity, None, 0.0, None))
    meta_path = expert_dir(out, job.k) / EXPERT_META
    done = False
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        done = meta.get("identity") == ident and int(meta.get("steps", -1)) == job.settings.steps
    if not done:
        student = load_supernet(out, device=device)
        teacher = student.plain_unet()  # the pretrained function (full arch), frozen
        settings = job.settings
        n_random = settings.random_archs if settings.sandwich else 0
        space = student.space

        def choose(rng: np.random.Generator) -> list[Any]:
            return sandwich_archs(space, rng, n_random) if settings.sandwich else [space.full()]

        kw = {"encoder_hidden_states": job.encoder_hidden_states} if job.encoder_hidden_states is not None else None
        span = job.intervals.spans()[job.k]
        tlog = run_training_data_parallel(
            student, teacher, job.images, job.intervals, job.k, settings, training_scheduler(job.scheduler_config),
            ckpt_dir, ident, rank=rank, world=world, choose_archs=choose, device=device, model_kwargs=kw,
            desc=f"expert {job.k} t∈[{span[0]},{span[1]}) x{world}", max_steps_this_call=max_steps_this_call)
        if tlog.step < settings.steps:  # a time slice: not final yet
            return ExpertResult(job.k, expert_dir(out, job.k), tlog.step, tlog.seconds, tlog.mean_loss()) \
                if rank == 0 else None
    if rank != 0:
        return None
    # at the final step: the sequential path resumes the last checkpoint, trains nothing and writes the expert
    return train_one_expert(job.k, out, job.intervals, job.images, job.settings, job.scheduler_config, job.identity,
                            device=device, encoder_hidden_states=job.encoder_hidden_states, progress=False)
