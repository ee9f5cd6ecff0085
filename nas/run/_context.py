"""The run context: one run folder and the artefacts in it, each loaded once, on first use."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run._artefacts import experts_data, heldout_path, train_condition
from nas.run._rundir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from experts.allocation import Allocation
    from experts.intervals import Intervals
    from experts.losses import HeldOutSet
    from experts.trajectory_proxy import TrajectoryProxy
    from nas.models import BaseModel
    from experts import MixtureSpace

log = logging.getLogger(__name__)

__all__ = ["RunContext", "check_experts", "prepare_run"]


def prepare_run(cfg: ExperimentConfig) -> RunDir:
    """The run directory of ``cfg``, created, with the resolved config written into it."""
    run = RunDir.from_config(cfg)
    run.ensure()
    run.write_config(cfg)
    log.debug("run directory %s", run.path)
    return run


def check_experts(run: RunDir) -> None:
    """Every trained expert's weights open and ``experts/intervals.json`` is consistent (a header
    check, no model is built): a truncated or damaged file is one :class:`UserError` line naming
    it and the command that remakes it. A run without experts, or an expert not trained yet,
    passes (the command then says what to run).

    Example:
        >>> import tempfile
        >>> check_experts(RunDir(tempfile.mkdtemp(), "doc"))  # no experts/: nothing to check
    """
    from experts.expert_folder import damaged_safetensors, expert_dir, load_expert_intervals

    if not (run.experts_dir / "intervals.json").is_file():
        return
    intervals = load_expert_intervals(run.experts_dir)
    for k in range(intervals.num_intervals):
        folder = expert_dir(run.experts_dir, k)
        bad = damaged_safetensors(folder) if folder.is_dir() else None
        if bad is not None:
            raise UserError(f"cannot read {bad}: the safetensors file is truncated or damaged; delete {folder} and "
                            f"run `diffnas train-experts --expert {k}` (it resumes from the expert's checkpoint "
                            "when there is one), then run this command again")


class RunContext:
    """One experiment's run folder ``runs/<name>/`` and what the stages load from it.

    Every artefact (base model, scheduler, intervals, experts, data, held-out set, mixture space,
    evaluation features, trajectory proxy) is loaded on first use and kept; nothing is loaded by
    the constructor, so a command can check its inputs before any slow work.

    Args:
        cfg: the resolved experiment config.
        device: where models are loaded and run (default: ``cfg.device``, resolved on first use).
        progress: show progress bars (e.g. while training the embedded base model).
        run: the run folder (default ``cfg.run_root/cfg.name``).

    Example:
        >>> from nas.config import load_config
        >>> ctx = RunContext(load_config(None, ["name=doc"]), device="cpu")
        >>> ctx.run.path.name, ctx.has_experts()
        ('doc', False)
    """

    def __init__(self, cfg: ExperimentConfig, *, device: Any = None, progress: bool = True,
                 run: RunDir | None = None) -> None:
        self.cfg = cfg
        self.run = run if run is not None else RunDir.from_config(cfg)
        self.progress = progress
        self._device = device
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, load: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def check_experts(self) -> None:
        """:func:`check_experts` of this run: commands that read the experts call it before
        :meth:`prepare` writes anything."""
        check_experts(self.run)

    def prepare(self, check_device: bool = True) -> RunDir:
        """Create the run folder and write the resolved config into it; returns the folder.

        Args:
            check_device: resolve :attr:`device` first, so an unavailable one fails before
                anything is written.
        """
        from nas.models import check_base_config

        check_base_config(self.cfg)  # model.* refused before the run folder is touched
        if check_device:
            self._device = self.device
        self.run.ensure()
        self.run.write_config(self.cfg)
        log.debug("run directory %s", self.run.path)
        return self.run

    # the base model and sampling ----------------------------------------------------------------
    @property
    def device(self) -> Any:
        """The device models run on (``cfg.device`` resolved, unless one was given)."""
        if self._device is None:
            from nas.device import resolve_device

            self._device = resolve_device(self.cfg.device)
        return self._device

    @property
    def base(self) -> BaseModel:
        """The base model of ``model.base`` (the embedded one is trained into ``base/`` once)."""
        from nas.models import load_base

        return self._once("base", lambda: load_base(self.cfg, self.run.base_dir, self.device,
                                                    progress=self.progress))

    @property
    def scheduler(self) -> Any:
        """The sampling scheduler of ``sampling.sampler`` for the base model's noise schedule."""
        from nas.sampling import make_scheduler

        return self._once("scheduler", lambda: make_scheduler(self.cfg.sampling.sampler,
                                                              self.base.scheduler_config))

    @property
    def timesteps(self) -> list[int]:
        """The training timesteps the sampler visits in ``sampling.num_steps`` steps."""
        from nas.sampling import sampling_timesteps

        return self._once("timesteps", lambda: sampling_timesteps(self.scheduler, self.cfg.sampling.num_steps))

    @property
    def base_macs_per_call(self) -> int:
        """MACs of one base UNet call on one sample."""
        from search_spaces.macs import count_unet_macs

        return self._once("base_macs", lambda: int(count_unet_macs(self.base.unet, batch_size=1)))

    @property
    def base_traj(self) -> int:
        """MACs of one base-model sampling trajectory (one sample)."""
        return self.base_macs_per_call * len(self.timesteps)

    def generate(self, model: Any, num_images: int, seed: int, num_steps: int, batch_size: int | None = None,
                 progress: bool | None = None, timesteps: Sequence[int] | Any | None = None) -> torch.Tensor:
        """Sample ``num_images`` from ``model`` with the run's scheduler: (N, C, H, W) in [-1, 1].

        ``timesteps`` (a descending list of training timesteps or a ``StepSchedule``), when
        given, is the trajectory instead of ``num_steps`` evenly spaced steps. A
        class-conditional base model's samples ask for every class equally often (image ``i``:
        class ``i % C``) with ``condition.guidance_scale`` (:func:`nas.conditions.sampling_kwargs`)."""
        from nas.conditions import sampling_kwargs
        from nas.sampling import generate

        b = self.base
        steps = {"num_steps": num_steps} if timesteps is None else {"timesteps": timesteps}
        return generate(model, self.scheduler, num_images=num_images, **steps,
                        batch_size=batch_size or self.cfg.sampling.batch_size, seed=seed, device=self.device,
                        sample_shape=b.sample_shape, vae=b.vae, latent_scale=b.latent_scale,
                        encoder_hidden_states=b.encoder_hidden_states,
                        progress=self.progress if progress is None else progress,
                        **sampling_kwargs(self.cfg, b, num_images))

    # evaluation features and the trajectory proxy -------------------------------------------------
    def extractor(self) -> Any:
        """The evaluation feature extractor (``evaluation.extractor``), on :attr:`device`."""
        from nas.metrics import build_extractor, resolve_extractor_kind

        ev = self.cfg.evaluation
        return self._once("extractor", lambda: build_extractor(
            resolve_extractor_kind(ev.extractor, self.cfg.data.dataset), device=self.device,
            cache_dir=self.run.cache_dir, inception_weights=ev.inception_weights))

    def reference_features(self) -> np.ndarray:
        """(N, D) evaluation features of the dataset (what FID compares against; cached on disk)."""
        from nas.data import dataset_id, load_dataset
        from nas.metrics import reference_features

        return self._once("reference_features", lambda: reference_features(
            dataset_id(self.cfg.data), load_dataset(self.cfg.data), self.extractor(), self.run.cache_dir))

    def trajectory_proxy(self) -> TrajectoryProxy:
        """The trajectory proxy of joint allocations (``schedule.*``; see :mod:`nas.run._proxy`):
        small-sample FID of a candidate's samples, paired distance to the base model's
        ``schedule.reference_steps``-step samples beside it; the reference is cached in ``proxy/``."""
        from nas.run._proxy import build_trajectory_proxy

        return self._once("trajectory_proxy", lambda: build_trajectory_proxy(self))

    # intervals, experts, data ---------------------------------------------------------------------
    def intervals(self) -> Intervals | None:
        """The experts' intervals (``experts/intervals.json``, else ``intervals.json``) or None."""
        if self._cache.get("intervals") is None:
            from experts.intervals import Intervals

            for p in (self.run.experts_dir / "intervals.json", self.run.intervals_path):
                if p.is_file():
                    try:
                        self._cache["intervals"] = Intervals.load(p)
                        break
                    except (ValueError, KeyError, json.JSONDecodeError) as exc:
                        log.warning("cannot read %s: %s", p, exc)
        return self._cache.get("intervals")

    def has_experts(self) -> bool:
        """Whether ``experts/`` holds trained experts."""
        return (self.run.experts_dir / "intervals.json").is_file()

    def experts(self) -> tuple[Intervals, list[Any]]:
        """(intervals, one elastic supernet per interval) from ``experts/``, on :attr:`device`."""
        from experts.training import load_experts

        return self._once("experts", lambda: load_experts(self.run.experts_dir, device=self.device))

    def data(self) -> tuple[torch.Tensor, HeldOutSet | None]:
        """(training samples, held-out set or None): the experts' split when there are intervals
        (the held-out set is drawn and written the first time), else every sample."""
        if "data" not in self._cache:
            iv = self.intervals()
            if iv is not None:
                self._cache["data"] = experts_data(self.cfg, self.run, self.base, iv, self.device)
            else:
                from nas.data import encode_latents, load_dataset

                images = load_dataset(self.cfg.data)  # (N,C,H,W) in [-1,1]
                if self.base.vae is not None:
                    images = encode_latents(images, self.base.vae, device=self.device)
                self._cache["data"] = (images, None)
        return self._cache["data"]

    def train_condition(self) -> dict[str, Any]:
        """The class condition of the training samples of :meth:`data`: ``labels``,
        ``condition_dropout`` and ``null_label`` for a class-conditional base model, ``{}``
        otherwise (:func:`nas.run.train_condition`); training and fine-tuning calls take it."""
        if "train_condition" not in self._cache:
            self._cache["train_condition"] = train_condition(self.cfg, self.base,
                                                             split=self.intervals() is not None)
        return self._cache["train_condition"]

    def heldout(self) -> HeldOutSet:
        """The stored held-out set ``experts/heldout.safetensors`` of the trained experts.

        Raises:
            UserError: it is missing, or was drawn for other intervals than the experts'.
        """
        if "heldout" not in self._cache:
            from experts.losses import HeldOutSet

            path = heldout_path(self.run)
            if not path.is_file():
                raise UserError(f"{path} does not exist; run `diffnas train-experts` (it writes the held-out set)")
            heldout = HeldOutSet.load(path)
            if heldout.intervals != self.experts()[0]:
                raise UserError(f"{path} was drawn for other intervals than the experts'; rerun `diffnas train-experts`")
            self._cache["heldout"] = heldout
        return self._cache["heldout"]

    # the mixture of experts ------------------------------------------------------------------------
    def expert_intervals(self) -> Intervals:
        """The trained experts' intervals (without loading the experts if they are not loaded yet)."""
        if "experts" in self._cache:
            return self._cache["experts"][0]
        from experts.expert_folder import load_expert_intervals

        return self._once("expert_intervals", lambda: load_expert_intervals(self.run.experts_dir))

    def steps_per_expert(self) -> tuple[int, ...]:
        """Sampling steps each expert's interval serves under ``sampling.sampler``/``num_steps``."""
        return self._once("steps", lambda: tuple(
            int(s) for s in self.expert_intervals().steps_per_interval(self.timesteps)))

    def mixture_space(self, joint: bool | None = None) -> MixtureSpace:
        """The space of the experts' archs (:class:`experts.MixtureSpace`): one part per expert
        (``e0``, ``e1``, ...), its MACs trajectory MACs.

        Args:
            joint: search the steps too (``None``: ``schedule.joint``). Off: each part is the
                expert's space weighted by the sampling steps its interval serves under
                ``sampling.sampler``/``num_steps``. On: each part is the interval's steps
                (:meth:`step_counts`, ``schedule.spacings``) x its expert's space, at most
                ``schedule.max_steps`` steps in all (:meth:`experts.MixtureSpace.joint`).
        """
        joint = self.cfg.schedule.joint if joint is None else bool(joint)
        if joint:
            return self._once("joint_space", self._build_joint_space)
        return self._once("mixture_space", self._build_mixture_space)

    def step_counts(self) -> list[tuple[int, ...]]:
        """The step counts each interval may receive in the joint space: ``schedule.counts`` (or
        ``0 .. max_steps``), clipped by the interval's span; the lowest-noise interval >= 1."""
        from experts.steps_space import interval_counts

        s = self.cfg.schedule
        try:
            return interval_counts(self.expert_intervals(), s.counts, max_steps=s.steps_limit(self.cfg.sampling))
        except ValueError as exc:
            raise UserError(f"schedule.counts: {exc}") from None

    def steps_space(self) -> MixtureSpace:
        """The steps-only space: the joint space of :meth:`mixture_space` with every expert
        pinned at its full arch (the base model's shape), so only the schedule is searched."""
        return self._once("steps_space", lambda: self._build_joint_space(pinned=True))

    def _expert_spaces(self) -> tuple[Intervals, list[Any]]:
        """(intervals, supernets) for their spaces: the loaded experts, else loaded on the CPU."""
        if "experts" in self._cache:
            return self._cache["experts"]
        from experts.training import load_experts

        return load_experts(self.run.experts_dir, device="cpu")

    def _build_mixture_space(self) -> MixtureSpace:
        from experts import MixtureSpace

        steps = self.steps_per_expert()  # the base model is loaded before the experts
        intervals, supernets = self._expert_spaces()
        return MixtureSpace([e.space for e in supernets], steps, intervals)

    def _build_joint_space(self, pinned: bool = False) -> MixtureSpace:
        from experts import MixtureSpace
        from experts.steps_space import PinnedSpace

        s = self.cfg.schedule
        intervals, supernets = self._expert_spaces()
        spaces = [PinnedSpace(e.space) if pinned else e.space for e in supernets]
        return MixtureSpace.joint(intervals, spaces, counts=self.step_counts(),
                                  spacings=s.spacings, max_steps=s.steps_limit(self.cfg.sampling),
                                  base_choice=s.base_choice and not pinned)

    # stored results ------------------------------------------------------------------------------
    def allocation(self, method: str, budget: float) -> Allocation | None:
        """``allocations/<method>-<budget>.json``, or None if there is none."""
        from experts.allocation import Allocation

        path = self.run.allocations_dir / f"{method}-{budget:g}.json"
        return Allocation.load(path) if path.is_file() else None

    def results(self) -> list[dict[str, Any]]:
        """Every record of ``results.jsonl`` (read each call: other processes append to it)."""
        return self.run.read_results()
