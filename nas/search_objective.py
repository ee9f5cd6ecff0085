"""The objective of ``diffnas search`` on a real run: allocations of the run's elastic experts.

The search space is a :class:`~search_spaces.ProductSpace` with one part per interval expert
(``e0``, ``e1``, ... in interval order; each part is that expert's
:class:`~search_spaces.UNetSpace`), weighted by the sampling steps each interval serves under
``sampling.sampler`` / ``sampling.num_steps``, so ``space.macs`` is the trajectory MACs and a
budget is a fraction of the base model's trajectory MACs.

Two fidelities (:class:`MixtureObjective`):

- ``proxy`` (every trial): on the fixed held-out set ``experts/heldout.safetensors`` (the one
  the experts' table and the fine-tuning report use), each interval's expert at its arch
  (supernet, ``set_active``; not fine-tuned) is scored with the experts' own training loss:
  denoising MSE + ``experts.distill_weight`` x MSE to the frozen base model
  (:func:`experts.denoising.expert_loss`); ``quality`` is the step-weighted sum over intervals
  (weights = share of sampling steps). ``denoise`` and ``distill`` are recorded apart, per
  interval too.
- ``fid`` (promoted trials): FID through :mod:`nas.metrics` (``evaluation.extractor``, reference
  features cached per dataset) of ``evaluation.num_samples`` images sampled by the mixture at the
  allocation with the run's sampler and steps, seed ``evaluation.seeds[0]``; KID and the number
  of sampled images are recorded.

With ``schedule.joint`` the space is the joint steps x experts space
(:meth:`experts.MixtureSpace.joint`; budgets stay fractions of the base model's trajectory MACs
at ``sampling.num_steps``): ``proxy`` is the trajectory proxy (:meth:`nas.run.RunContext.trajectory_proxy`:
``quality`` = the small-sample FID of ``schedule.proxy_images`` samples along the allocation's
schedule, or the paired distance with ``schedule.proxy: distance``; both recorded) and ``fid``
samples along the allocation's schedule. The steps-only search (:func:`steps_problem`, the
``steps`` baseline) is the same with every expert pinned at the base model's full arch, sampling
the base model itself.

The objective object is small (the resolved config); each worker process loads the base model,
the experts and the held-out set once, on first use, and keeps them (Ray Tune reuses its trial
actors). On a multi-node cluster the run folder must be on a filesystem every node sees.

Example::

    >>> problem = mixture_problem(RunContext(cfg))  # doctest: +SKIP
    >>> run_search(problem.space, problem.objective, cfg.search, run, intervals=problem.intervals)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experts import MixtureSpace
from experts.intervals import Intervals
from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run import RunContext, RunDir, heldout_path
from nas.search import EvalContext
from search_spaces import Arch, ProductSpace

log = logging.getLogger(__name__)

__all__ = ["MODES", "MixtureObjective", "MixtureProblem", "absolute_config", "joint_known_points", "mixture_problem",
           "steps_problem"]

_LOCK = threading.Lock()
# (run folder, device[, mode, schedule section]) -> loaded models, per process
_STATE: dict[tuple[Any, ...], Any] = {}


def absolute_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with run/data/model paths made absolute (workers may run elsewhere)."""
    changes: dict[str, Any] = {"run_root": str(Path(cfg.run_root).resolve())}
    if cfg.data.path:
        changes["data"] = dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).resolve()))
    base = cfg.model.base
    if not base.startswith("embedded:") and Path(base).exists():
        changes["model"] = dataclasses.replace(cfg.model, base=str(Path(base).resolve()))
    if cfg.evaluation.inception_weights and Path(cfg.evaluation.inception_weights).exists():
        changes["evaluation"] = dataclasses.replace(
            cfg.evaluation, inception_weights=str(Path(cfg.evaluation.inception_weights).resolve()))
    return dataclasses.replace(cfg, **changes)


@dataclass
class _Loaded:
    base: Any
    experts: list[Any]
    intervals: Intervals
    heldout: Any
    noise_scheduler: Any
    step_weights: tuple[float, ...]
    teacher_out: dict[tuple[int, int], Any]
    mixture: MixtureSpace
    fid: Any = None  # (extractor, reference features) once needed
    ctx: Any = None  # the worker's RunContext (joint modes: its trajectory proxy)


#: What a :class:`MixtureObjective` searches: expert widths at the run's steps, the joint steps x
#: experts space, or the steps alone (the base model at full width).
MODES = ("widths", "joint", "steps")


@dataclass(frozen=True)
class MixtureObjective:
    """Proxy loss and FID of an allocation of the run's experts (see the module docstring).

    Attributes:
        cfg: the resolved config, paths absolute (:func:`absolute_config`).
        steps_per_expert: sampling steps each interval serves (the proxy's weights).
        batch_size: held-out samples per expert call.
        mode: one of :data:`MODES`.
        reference_macs: joint modes: the base model's trajectory MACs (budget ratio 1).
        known: joint modes: ``(budget or None, source, arch)`` points evaluated first
            (:meth:`known_points`).
        allocation_method: the method name of the allocation files the search writes.
        enqueue_router: whether the router's allocation is evaluated first too (not for the
            steps-only baseline, which must not depend on the router).
    """

    cfg: ExperimentConfig
    steps_per_expert: tuple[int, ...]
    batch_size: int = 256
    fidelities: tuple[str, ...] = ("proxy", "fid")
    mode: str = "widths"
    reference_macs: int | None = None
    known: tuple[tuple[float | None, str, Arch], ...] = ()
    allocation_method: str = "search"
    enqueue_router: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; modes: {', '.join(MODES)}")

    def known_points(self, budget_ratio: float | None) -> list[tuple[str, Arch]] | None:
        """Joint modes: the points of :attr:`known` for this budget; ``None`` (the search's
        default points) otherwise."""
        if self.mode == "widths":
            return None
        return [(src, arch) for b, src, arch in self.known if b == budget_ratio]

    # --------------------------------------------------------------------------- loading
    def _load(self, device: str) -> _Loaded:
        run = RunDir.from_config(self.cfg)
        key: tuple[Any, ...] = (str(run.path), str(device))
        if self.mode != "widths":  # another space over the same experts
            key += (self.mode, self.cfg.schedule)
        with _LOCK:
            state = _STATE.get(key)
            if state is not None:
                return state
            from experts.denoising import training_scheduler

            t0 = time.perf_counter()
            ctx = RunContext(self.cfg, device=device, progress=False)
            base = ctx.base
            base.unet.eval()
            intervals, experts = ctx.experts()
            heldout = ctx.heldout() if self.mode == "widths" else None  # joint modes score trajectories
            steps = [float(s) for s in self.steps_per_expert]
            total = sum(steps) or 1.0
            if self.mode == "widths":
                mixture = MixtureSpace([e.space for e in experts], self.steps_per_expert, intervals)
            else:
                mixture = ctx.steps_space() if self.mode == "steps" else ctx.mixture_space(joint=True)
            state = _Loaded(base, experts, intervals, heldout, training_scheduler(base.scheduler_config),
                            tuple(s / total for s in steps), {}, mixture, ctx=ctx)
            _STATE[key] = state
            log.info("search objective: loaded the base model, %d experts and the held-out set on %s in %.1f s "
                     "(pid %d)", len(experts), device, time.perf_counter() - t0, os.getpid())
            return state

    # -------------------------------------------------------------------------- evaluate
    def evaluate(self, arch: Arch, fidelity: str, context: EvalContext) -> Mapping[str, Any]:
        device = context.device or "cpu"
        if fidelity not in self.fidelities:
            raise ValueError(f"unknown fidelity {fidelity!r}; this objective has {list(self.fidelities)}")
        state = self._load(device)
        archs = state.mixture.split(Arch(arch))
        on_base = set(state.mixture.base_intervals(Arch(arch)))  # served by the base model: arch None
        archs = [None if k in on_base else a for k, a in enumerate(archs)]
        schedule = state.mixture.schedule(Arch(arch))  # None: the run's own steps
        if fidelity == "proxy":
            if schedule is not None:
                return self._trajectory(state, archs, schedule)
            return self._proxy(state, archs, device)
        return self._fid(state, archs, device, schedule)

    def _model(self, state: _Loaded, archs: list[Arch | None]) -> Any:
        """What samples: the base model (steps-only search) or the mixture at ``archs`` (an
        interval whose arch is ``None`` is served by the base model)."""
        if self.mode == "steps":
            return state.base.unet
        from experts.mixture import MixtureOfExperts

        models = [state.base.unet if a is None else e for a, e in zip(archs, state.experts)]
        return MixtureOfExperts(state.intervals, models, archs)

    def _trajectory(self, state: _Loaded, archs: list[Arch], schedule: Any) -> dict[str, Any]:
        from nas.run import proxy_quality

        proxy = state.ctx.trajectory_proxy()
        score = proxy.score(self._model(state, archs), schedule)
        return {"quality": proxy_quality(score, self.cfg.schedule.proxy), "proxy": self.cfg.schedule.proxy,
                "small_fid": score.fid, "distance": score.distance, "raw_distance": score.raw_distance,
                "unet_calls": score.unet_calls, "sampled_images": score.num_images,
                "seed": self.cfg.schedule.proxy_seed,
                "num_steps": score.num_steps, "steps_per_interval": list(schedule.steps_per_interval),
                "reference_steps": len(proxy.reference_timesteps)}

    def _proxy(self, state: _Loaded, archs: list[Arch], device: str) -> dict[str, Any]:
        import torch

        from experts.denoising import LossBatch, expert_loss

        w_distill = float(self.cfg.experts.distill_weight)
        kw = ({"encoder_hidden_states": state.base.encoder_hidden_states}
              if state.base.encoder_hidden_states is not None else None)
        teacher = state.base.unet
        h = state.heldout
        denoise, distill = [], []
        with torch.no_grad():
            for k, (model, arch) in enumerate(zip(state.experts, archs)):
                model.set_active(arch, mode="sliced")  # no gradients: cost of the arch, not the full model
                m = int(h.t[k].shape[0])
                acc_dn = acc_ds = 0.0
                for c, s in enumerate(range(0, m, self.batch_size)):
                    sl = slice(s, min(m, s + self.batch_size))
                    cond = None if h.labels is None else {"class_labels": h.labels[k][sl]}  # class-conditional
                    batch = LossBatch(h.x0[k][sl], h.noise[k][sl], h.t[k][sl], cond).to(device)
                    t_out = state.teacher_out.get((k, c))
                    if t_out is None and w_distill > 0:
                        from experts.denoising import as_tensor, batch_model_kwargs
                        from experts.text_condition import call_denoiser

                        x_t = state.noise_scheduler.add_noise(batch.x0, batch.noise, batch.t)  # (b,C,H,W)
                        t_kw = batch_model_kwargs(batch, _expand(kw, len(batch))) or {}
                        t_out = as_tensor(call_denoiser(teacher, x_t, batch.t, **t_kw)).detach()
                        state.teacher_out[(k, c)] = t_out
                    terms = expert_loss(model, None, batch, state.noise_scheduler, distill_weight=w_distill,
                                        teacher_out=t_out, model_kwargs=kw)
                    acc_dn += float(terms.denoise) * len(batch)
                    acc_ds += float(terms.distill) * len(batch)
                denoise.append(acc_dn / m)
                distill.append(acc_ds / m)
        w = state.step_weights
        dn = sum(wk * x for wk, x in zip(w, denoise))
        ds = sum(wk * x for wk, x in zip(w, distill))
        return {"quality": dn + w_distill * ds, "denoise": dn, "distill": ds, "distill_weight": w_distill,
                "denoise_per_interval": denoise, "distill_per_interval": distill,
                "heldout_per_interval": int(h.n_per_interval), "sampled_images": 0}

    def _fid(self, state: _Loaded, archs: list[Arch], device: str, schedule: Any = None) -> dict[str, Any]:
        from nas.data import dataset_id, load_dataset
        from nas.metrics import build_extractor, compute_quality, reference_features, resolve_extractor_kind
        from nas.conditions import sampling_kwargs
        from nas.sampling import generate, make_scheduler

        cfg = self.cfg
        ev = cfg.evaluation
        run = RunDir.from_config(cfg)
        if state.fid is None:
            kind = resolve_extractor_kind(ev.extractor, cfg.data.dataset)
            extractor = build_extractor(kind, device=device, cache_dir=run.cache_dir,
                                        inception_weights=ev.inception_weights)
            ref = reference_features(dataset_id(cfg.data), load_dataset(cfg.data), extractor, run.cache_dir)
            state.fid = (extractor, ref)
        extractor, ref = state.fid
        model = self._model(state, archs)
        b = state.base
        n = int(ev.num_samples)
        seed = int(ev.seeds[0])
        # the run's evenly spaced steps, or the allocation's own schedule (joint modes)
        steps = ({"num_steps": cfg.sampling.num_steps} if schedule is None
                 else {"timesteps": schedule.timesteps()})
        images = generate(model, make_scheduler(cfg.sampling.sampler, b.scheduler_config), num_images=n,
                          **steps, batch_size=cfg.sampling.batch_size, seed=seed,
                          device=device, sample_shape=b.sample_shape, vae=b.vae, latent_scale=b.latent_scale,
                          encoder_hidden_states=b.encoder_hidden_states, progress=False,
                          **sampling_kwargs(cfg, b, n))  # (N,C,H,W); class-conditional: every class, guided
        q = compute_quality(images, ref, extractor)
        out = {"quality": float(q.fid), "fid": float(q.fid), "kid": float(q.kid), "extractor": q.extractor,
               "sampled_images": n, "seed": seed, "num_reference": int(q.num_reference),
               "sampler": cfg.sampling.sampler, "num_steps": cfg.sampling.num_steps}
        if schedule is not None:
            out.update(num_steps=schedule.num_steps, steps_per_interval=list(schedule.steps_per_interval))
        return out


def _expand(kw: Mapping[str, Any] | None, batch: int) -> dict[str, Any]:
    out = dict(kw or {})
    for key, v in list(out.items()):
        if hasattr(v, "ndim") and v.ndim >= 1 and v.shape[0] == 1 and batch > 1:
            out[key] = v.expand(batch, *v.shape[1:])
    return out


@dataclass(frozen=True)
class MixtureProblem:
    """What ``diffnas search`` searches on a real run: the space, the objective, the intervals."""

    space: ProductSpace
    objective: MixtureObjective
    intervals: Intervals
    steps_per_expert: tuple[int, ...]


def _check_experts(ctx: RunContext, heldout: bool) -> None:
    run = ctx.run
    if not ctx.has_experts():
        raise UserError(f"{run.experts_dir} has no trained experts; run `diffnas train-experts` first "
                        "(or `diffnas search --synthetic` for a dry run of the search machinery)")
    if heldout and not heldout_path(run).is_file():
        raise UserError(f"{heldout_path(run)} does not exist; run `diffnas train-experts`")


def mixture_problem(ctx: RunContext) -> MixtureProblem:
    """Build the mixture space and objective of a run whose experts are trained (the joint steps
    x experts space when ``schedule.joint``).

    Raises:
        UserError: no trained experts, or no held-out set, with the command that makes them.
    """
    if ctx.cfg.schedule.joint:
        return _joint_problem(ctx, "joint")
    _check_experts(ctx, heldout=True)
    mixture = ctx.mixture_space()
    steps = ctx.steps_per_expert()
    objective = MixtureObjective(absolute_config(ctx.cfg), steps)
    return MixtureProblem(mixture.space, objective, mixture.intervals, steps)


def steps_problem(ctx: RunContext) -> MixtureProblem:
    """The steps-only search of the ``steps`` baseline: the base model at full width, only the
    step schedule searched (same proxy as the joint search); it writes ``steps-<budget>.json``.

    Raises:
        UserError: no trained experts (their intervals are the schedule's).
    """
    return _joint_problem(ctx, "steps")


def _joint_problem(ctx: RunContext, mode: str) -> MixtureProblem:
    _check_experts(ctx, heldout=False)
    mixture = ctx.steps_space() if mode == "steps" else ctx.mixture_space(joint=True)
    steps = ctx.steps_per_expert()
    known = tuple((b, src, arch) for b in (None, *ctx.cfg.search.budgets)
                  for src, arch in joint_known_points(ctx, mixture, b, widths=mode == "joint"))
    objective = MixtureObjective(absolute_config(ctx.cfg), steps, mode=mode, reference_macs=ctx.base_traj,
                                 known=known, allocation_method="steps" if mode == "steps" else "search",
                                 enqueue_router=mode != "steps")
    return MixtureProblem(mixture.space, objective, mixture.intervals, steps)


def joint_known_points(ctx: RunContext, mixture: MixtureSpace, budget: float | None,
                       widths: bool = True) -> list[tuple[str, Arch]]:
    """Points of a joint space a search evaluates first: ``base`` (the run's own steps at full
    width), and for a budget ``uniform`` (the run's steps, the widest uniform width within it;
    ``widths`` only) and ``fewer_steps`` (full width, the most evenly spaced steps within it).
    Points the space cannot express (steps it does not offer) are left out."""
    from experts.schedule import StepSchedule
    from nas.sampling import sampling_timesteps
    from search_spaces.uniform import uniform_arch

    intervals = mixture.intervals
    full = [part.full() for part in mixture.parts]
    run_steps = StepSchedule.from_timesteps(intervals, ctx.timesteps)
    candidates: list[tuple[str, list[Any], Any]] = [("base", full, run_steps)]
    if budget is not None:
        if widths:
            found = uniform_arch(ctx.mixture_space(joint=False).space, budget)
            if found is not None:
                candidates.append(("uniform", ctx.mixture_space(joint=False).split(found.arch), run_steps))
        n = int(budget * ctx.cfg.sampling.num_steps + 1e-9)
        if n >= 1:
            candidates.append(("fewer_steps", full,
                               StepSchedule.from_timesteps(intervals, sampling_timesteps(ctx.scheduler, n))))
    out = []
    for source, archs, schedule in candidates:
        # with the base model as a choice, "base" and "fewer_steps" are the base model itself
        on_base = range(intervals.num_intervals) if mixture.base_choice and source != "uniform" else ()
        arch = _join_placed(mixture, archs, schedule, ctx.cfg.schedule.spacings, on_base)
        if arch is None:
            log.info("known point %s is not in the joint space; not enqueued", source)
            continue
        out.append((source, arch))
    return out


def _join_placed(mixture: MixtureSpace, archs: list[Any], schedule: Any, spacings: Sequence[str],
                 base_intervals: Sequence[int] = ()) -> Arch | None:
    """The joint arch of ``archs`` along ``schedule``; when the space does not place the
    schedule's timesteps exactly (the sampler's grid is not the intervals'), the same step
    counts with the first of ``spacings`` the space accepts; ``None`` when nothing fits."""
    from experts.schedule import StepSchedule

    def _schedules() -> Iterator[Any]:
        yield schedule
        for sp in spacings:
            # a sampler's grid may leave an interval without a step (DPM-Solver++ at 4 steps visits
            # 800..200): those counts have no schedule in this space, which is "not in the space", not an error
            try:
                yield StepSchedule.from_counts(mixture.intervals, schedule.steps_per_interval, sp)
            except ValueError:
                continue

    for sched in _schedules():
        try:
            arch = mixture.join(archs, sched, base_intervals)
            mixture.space.validate(arch)
            return arch
        except ValueError:
            continue
    return None
