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
trains one of them anywhere the folder is visible, and :func:`load_experts` reads the result.
This module never imports ray; ``nas/ray_backend.py`` submits the jobs.

Example::

    >>> from experts.training import ExpertTrainSettings, train_experts
    >>> res = train_experts(base.unet, Intervals.uniform(1000, 3), images, ExpertTrainSettings(steps=300),
    ...                     "runs/demo/experts", scheduler_config=base.scheduler_config)  # doctest: +SKIP
    >>> [r.path.name for r in res.experts]  # doctest: +SKIP
    ['expert_0', 'expert_1', 'expert_2']
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from experts.intervals import Intervals
from experts.losses import expert_loss, make_batch, training_scheduler
from search_spaces.base import Arch
from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "ExpertJob",
    "ExpertResult",
    "ExpertTableRow",
    "ExpertTrainSettings",
    "ExpertsResult",
    "TrainLog",
    "base_fingerprint",
    "build_supernet",
    "expert_dir",
    "expert_table",
    "format_expert_table",
    "load_experts",
    "load_supernet",
    "prepare_expert_jobs",
    "run_expert_job",
    "run_training",
    "train_experts",
    "train_one_expert",
]

MANIFEST = "manifest.json"
EXPERT_META = "diffnas_expert.json"
SUPERNET_DIR = "supernet"
CHECKPOINTS_DIR = "checkpoints"


@dataclass(frozen=True)
class ExpertTrainSettings:
    """How each expert is trained (``experts.*`` keys of the experiment config).

    Attributes:
        steps: optimiser steps per expert.
        batch_size: images per step (every sub-network of a step sees the same batch).
        learning_rate, weight_decay: AdamW.
        random_archs: random sub-networks per step besides the full and the smallest one.
        distill_weight: weight of the distillation loss (MSE to the frozen pretrained model).
        grad_clip: max gradient norm (``None``: no clipping).
        checkpoint_every: steps between checkpoints.
        seed: seeds the batches, timesteps, noise and sampled archs.
        sandwich: ``False`` trains the full arch only (a plain per-interval fine-tuning).
    """

    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    random_archs: int = 2
    distill_weight: float = 1.0
    grad_clip: float | None = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    sandwich: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.random_archs < 0:
            raise ValueError(f"random_archs must be >= 0, got {self.random_archs}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    def identity(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed (all but ``steps``, ``checkpoint_every``)."""
        d = dataclasses.asdict(self)
        d.pop("steps")
        d.pop("checkpoint_every")
        return d


@dataclass(frozen=True)
class TrainLog:
    """What one training call did: final step, per-step losses, seconds (all calls together)."""

    step: int
    losses: tuple[dict[str, float], ...]
    seconds: float

    def mean_loss(self, key: str = "loss", last: int = 20) -> float:
        vals = [r[key] for r in self.losses[-last:] if key in r]
        return float(sum(vals) / len(vals)) if vals else float("nan")


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
    """Everything :func:`train_one_expert` needs for expert ``k`` (picklable, for Ray tasks)."""

    k: int
    out_dir: Path
    intervals: Intervals
    images: torch.Tensor
    settings: ExpertTrainSettings
    scheduler_config: dict
    identity: dict
    encoder_hidden_states: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# helpers


def expert_dir(out_dir: str | Path, k: int) -> Path:
    """``<out>/expert_<k>``."""
    return Path(out_dir) / f"expert_{k}"


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, shapes, dtypes, bytes): which base experts came from."""
    h = hashlib.sha256()
    for name, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _is_supernet(m: nn.Module) -> bool:
    return hasattr(m, "set_active") and hasattr(m, "space")


def _weights_module(m: nn.Module) -> nn.Module:
    return m.unet if _is_supernet(m) else m


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{key}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _recover(ckpt: Path) -> None:
    """After a kill during the checkpoint swap, keep whichever complete checkpoint is left."""
    old = ckpt.with_name(ckpt.name + ".old")
    if not ckpt.exists() and old.exists():
        old.rename(ckpt)
    _rmtree(ckpt.with_name(ckpt.name + ".tmp"))
    _rmtree(old)


def _save_checkpoint(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                     rng: np.random.Generator, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    _rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in _weights_module(model).state_dict().items()},
              str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    full = dict(state)
    full["optimizer"] = opt_meta
    full["torch_rng"] = base64.b64encode(gen.get_state().numpy().tobytes()).decode("ascii")
    full["numpy_rng"] = rng.bit_generator.state
    (tmp / "state.json").write_text(json.dumps(full, indent=1))
    old = ckpt.with_name(ckpt.name + ".old")
    _rmtree(old)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    _rmtree(old)


def _load_checkpoint(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                     rng: np.random.Generator) -> dict[str, Any]:
    from safetensors.torch import load_file

    state = json.loads((ckpt / "state.json").read_text())
    weights = load_file(str(ckpt / "model.safetensors"))
    _weights_module(model).load_state_dict(weights, strict=True)
    opt.load_state_dict(_unflatten_optimizer(load_file(str(ckpt / "optimizer.safetensors")), state["optimizer"]))
    gen.set_state(torch.frombuffer(bytearray(base64.b64decode(state["torch_rng"])), dtype=torch.uint8))
    rng.bit_generator.state = state["numpy_rng"]
    return state


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' INFO/WARNING logs (e.g. the "install accelerate" note on every load)."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def _jsonable(d: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


# --------------------------------------------------------------------------------------------
# the training loop (shared with experts.finetune)


def sandwich_archs(space: Any, rng: np.random.Generator, random_archs: int) -> list[Arch]:
    """Full arch, smallest arch, then ``random_archs`` uniformly sampled archs."""
    return [space.full(), space.smallest()] + [space.sample(rng) for _ in range(random_archs)]


def run_training(
    student: nn.Module,
    teacher: nn.Module | None,
    images: torch.Tensor,
    intervals: Intervals,
    k: int,
    settings: ExpertTrainSettings,
    noise_scheduler: Any,
    ckpt_dir: Path,
    identity: Mapping[str, Any],
    *,
    choose_archs: Callable[[np.random.Generator], Sequence[Mapping[str, Any] | None]] | None = None,
    device: str | torch.device = "cpu",
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "expert",
    max_steps_this_call: int | None = None,
) -> TrainLog:
    """Train ``student`` on interval ``k`` up to ``settings.steps``, resuming from ``ckpt_dir``.

    Args:
        student: a supernet (``choose_archs`` gives the sub-networks of each step) or a plain
            model (``choose_archs`` None: one call per step).
        teacher: frozen model for distillation, or None.
        images: training samples (N, C, H, W) (latents for latent models), kept on the CPU.
        identity: what must match to resume a checkpoint (settings, intervals, base, arch...).
        choose_archs: per step, the archs to evaluate (``None`` entries: leave as is).
        max_steps_this_call: stop after this many steps of this call (time slicing; how the
            tests simulate a kill); the state is checkpointed, and a later call continues.

    Returns:
        the log of all steps so far (from the checkpoint and this call).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    ident = _jsonable(identity)
    student.to(device)
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(int(settings.seed) * 1_000_003 + int(k))
    rng = np.random.default_rng([int(settings.seed), int(k)])
    step, losses, seconds = 0, [], 0.0
    _recover(ckpt_dir)
    if (ckpt_dir / "state.json").is_file():
        stored = json.loads((ckpt_dir / "state.json").read_text()).get("identity")
        if stored != ident:
            diff = sorted(key for key in set(stored or {}) | set(ident) if (stored or {}).get(key) != ident.get(key))
            raise UserError(
                f"the checkpoint in {ckpt_dir} was made with other settings ({', '.join(diff)} differ); "
                f"delete {ckpt_dir.parent.parent} (or that checkpoint) to start again, or use another run name"
            )
        state = _load_checkpoint(ckpt_dir, student, opt, gen, rng)
        step, losses, seconds = int(state["step"]), list(state.get("losses", [])), float(state.get("seconds", 0.0))
        if step > settings.steps:
            raise UserError(
                f"{ckpt_dir} is already at step {step} > steps={settings.steps}; raise the steps or delete the checkpoint"
            )
        log.info("%s: resuming at step %d of %d", desc, step, settings.steps)
    end = settings.steps if max_steps_this_call is None else min(settings.steps, step + int(max_steps_this_call))
    pbar = tqdm(total=settings.steps, initial=step, desc=desc, disable=not progress, dynamic_ncols=True)
    student.train()
    t_start = time.perf_counter()

    def save() -> None:
        state = {"step": step, "identity": ident, "losses": losses,
                 "seconds": seconds + time.perf_counter() - t_start}
        _save_checkpoint(ckpt_dir, student, opt, gen, rng, state)

    try:
        while step < end:
            batch = make_batch(images, intervals, k, settings.batch_size, gen).to(device)
            archs = list(choose_archs(rng)) if choose_archs is not None else [None]
            teacher_out = None
            if teacher is not None and settings.distill_weight > 0:
                x_t = noise_scheduler.add_noise(batch.x0, batch.noise, batch.t)  # (B,C,H,W)
                with torch.no_grad():
                    out = teacher(x_t, batch.t, **_expand_kwargs(model_kwargs, x_t.shape[0]))
                    teacher_out = out.sample if hasattr(out, "sample") else out
            opt.zero_grad(set_to_none=True)
            record: dict[str, float] = {}
            tot = den = dis = 0.0
            for j, arch in enumerate(archs):
                if arch is not None:
                    student.set_active(arch)
                res = expert_loss(student, None, batch, noise_scheduler, distill_weight=settings.distill_weight,
                                  teacher_out=teacher_out, model_kwargs=model_kwargs)
                (res.total / len(archs)).backward()
                tot += float(res.total.detach())
                den += float(res.denoise.detach())
                dis += float(res.distill.detach())
                if choose_archs is not None and j == 0:
                    record["loss_full"] = float(res.total.detach())
                if choose_archs is not None and j == 1:
                    record["loss_smallest"] = float(res.total.detach())
            if settings.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            opt.step()
            if _is_supernet(student):
                student.set_active(student.space.full())
            n = len(archs)
            record.update({"loss": tot / n, "denoise": den / n, "distill": dis / n})
            if not all(math.isfinite(v) for v in record.values()):
                raise FloatingPointError(f"{desc}: non-finite loss at step {step + 1} ({record}); lower the learning rate")
            step += 1
            losses.append({"step": step, **{key: round(v, 6) for key, v in record.items()}})
            pbar.update(1)
            pbar.set_postfix(loss=f"{record['loss']:.4f}")
            if step % settings.checkpoint_every == 0 and step < end:
                save()
        save()
    finally:
        pbar.close()
        student.eval()
    return TrainLog(step, tuple(losses), seconds + time.perf_counter() - t_start)


def _expand_kwargs(model_kwargs: Mapping[str, Any] | None, batch: int) -> dict[str, Any]:
    kw = dict(model_kwargs or {})
    for key, v in list(kw.items()):
        if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == 1 and batch > 1:
            kw[key] = v.expand(batch, *v.shape[1:])
    return kw


# --------------------------------------------------------------------------------------------
# experts


def build_supernet(base_unet: nn.Module, options: Any = None, importance: str = "magnitude") -> nn.Module:
    """The elastic supernet of ``base_unet`` (a deep copy; channels ordered once by importance)."""
    from search_spaces.elastic_unet import ElasticUNet

    return ElasticUNet(base_unet, options, importance=importance)


def load_supernet(out_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The untrained, importance-ordered supernet all experts started from (``<out>/supernet``)."""
    from search_spaces.elastic_unet import ElasticUNet

    path = Path(out_dir) / SUPERNET_DIR
    if not path.is_dir():
        raise UserError(f"{out_dir} has no {SUPERNET_DIR}/ folder; run `diffnas train-experts` first")
    with quiet_diffusers():
        return ElasticUNet.from_pretrained(path, device=device).eval()


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
) -> list[ExpertJob]:
    """Write ``<out>/supernet``, ``intervals.json`` and ``manifest.json``; one job per interval.

    Rerunning with the same base, options and intervals reuses ``supernet/``; anything else
    is a :class:`UserError` (experts of another base or other intervals are never mixed).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = base_fingerprint(base_unet)
    sup_dir = out / SUPERNET_DIR
    manifest_path = out / MANIFEST
    opts_dict = None
    if options is not None:
        opts_dict = _jsonable(dataclasses.asdict(options))
    manifest = {
        "format": "diffnas-experts",
        "intervals": intervals.to_dict(),
        "base_fingerprint": fp,
        "importance": importance,
        "options": opts_dict,
        "settings": _jsonable(settings.identity()),
        "scheduler_config": _jsonable({k: v for k, v in dict(scheduler_config).items()}),
    }
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        diff = [key for key in ("intervals", "base_fingerprint", "importance", "options", "settings")
                if old.get(key) != manifest[key]]
        if diff:
            raise UserError(
                f"{out} holds experts made with other {', '.join(diff)}; delete {out} to train new ones "
                f"(or use another run name)"
            )
    if not (sup_dir / "diffnas_supernet.json").is_file():
        sup = build_supernet(base_unet, options, importance)
        tmp = out / (SUPERNET_DIR + ".tmp")
        _rmtree(tmp)
        sup.save_pretrained(tmp)
        _rmtree(sup_dir)
        tmp.rename(sup_dir)
    intervals.save(out / "intervals.json")
    tmp_manifest = manifest_path.with_suffix(".json.tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp_manifest.replace(manifest_path)
    identity = {"settings": manifest["settings"], "intervals": manifest["intervals"], "base": fp,
                "importance": importance, "options": opts_dict}
    cfg = dict(scheduler_config)
    return [ExpertJob(k, out, intervals, images, settings, cfg, identity, encoder_hidden_states)
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
) -> ExpertResult:
    """Train (or resume, or reuse) expert ``k`` from ``<out>/supernet`` into ``<out>/expert_<k>``.

    Needs :func:`prepare_expert_jobs` to have run (it writes the supernet and the identity).
    Safe to run in another process or on another machine that sees ``out_dir``.
    """
    out = Path(out_dir)
    final = expert_dir(out, k)
    meta_path = final / EXPERT_META
    ident = _jsonable(identity)
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
        desc=f"expert {k} t∈[{span[0]},{span[1]})", max_steps_this_call=max_steps_this_call,
    )
    if tlog.step < settings.steps:  # time slice ended early: not final yet
        return ExpertResult(k, final, tlog.step, tlog.seconds, tlog.mean_loss())
    student.set_active(space.full())
    tmp = final.with_name(final.name + ".tmp")
    _rmtree(tmp)
    student.save_pretrained(tmp)
    meta = {"k": k, "span": list(span), "steps": tlog.step, "seconds": round(tlog.seconds, 3),
            "final_loss": tlog.mean_loss(), "final_loss_full": tlog.mean_loss("loss_full"),
            "final_loss_smallest": tlog.mean_loss("loss_smallest"), "identity": ident}
    (tmp / EXPERT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    _rmtree(final)
    tmp.rename(final)
    return ExpertResult(k, final, tlog.step, tlog.seconds, tlog.mean_loss())


def run_expert_job(job: ExpertJob, device: str | torch.device = "cpu", progress: bool = True,
                   max_steps_this_call: int | None = None) -> ExpertResult:
    """Run one :class:`ExpertJob` (the function a Ray task calls)."""
    return train_one_expert(
        job.k, job.out_dir, job.intervals, job.images, job.settings, job.scheduler_config, job.identity,
        device=device, encoder_hidden_states=job.encoder_hidden_states, progress=progress,
        max_steps_this_call=max_steps_this_call,
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
    """
    t0 = time.perf_counter()
    jobs = prepare_expert_jobs(base_unet, intervals, images, settings, out_dir, scheduler_config=scheduler_config,
                               options=options, importance=importance, encoder_hidden_states=encoder_hidden_states)
    results = []
    for job in jobs:
        if only is not None and job.k not in only:
            continue
        results.append(run_expert_job(job, device=device, progress=progress, max_steps_this_call=max_steps_this_call))
    return ExpertsResult(Path(out_dir), intervals, tuple(results), time.perf_counter() - t0)


def load_experts(out_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Intervals, list[nn.Module]]:
    """The intervals and the trained supernet experts (full arch) of an experts folder."""
    from search_spaces.elastic_unet import ElasticUNet

    out = Path(out_dir)
    iv_path = out / "intervals.json"
    if not iv_path.is_file():
        raise UserError(f"{out} has no intervals.json: not an experts folder; run `diffnas train-experts` first")
    intervals = Intervals.load(iv_path)
    experts = []
    for k in range(intervals.num_intervals):
        d = expert_dir(out, k)
        if not (d / EXPERT_META).is_file():
            raise UserError(f"expert {k} is not trained yet ({d} is missing); run `diffnas train-experts`")
        with quiet_diffusers():
            experts.append(ElasticUNet.from_pretrained(d, device=device).eval())
    return intervals, experts


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
