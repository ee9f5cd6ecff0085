"""What the bench rows share: the candidate record and the lazily loaded base model, data and experts.

See :mod:`benchmarks.bench`.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from nas.config import ExperimentConfig
from nas.methods import Candidate
from nas.rundir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from nas.models import BaseModel

log = logging.getLogger(__name__)


class _Context:
    """Everything shared by the rows of one bench call (base model, data, experts), loaded lazily."""

    def __init__(self, cfg: ExperimentConfig, run: RunDir, device: Any, progress: bool) -> None:
        from nas.commands.base import load_base
        from nas.sampling import make_scheduler, sampling_timesteps
        from search_spaces.macs import count_unet_macs

        self.cfg, self.run, self.device, self.progress = cfg, run, device, progress
        self.base: BaseModel = load_base(cfg, run, device, progress=progress)
        self.scheduler = make_scheduler(cfg.sampling.sampler, self.base.scheduler_config)
        self.timesteps = sampling_timesteps(self.scheduler, cfg.sampling.num_steps)
        self.base_macs_per_call = int(count_unet_macs(self.base.unet, batch_size=1))
        self.base_traj = self.base_macs_per_call * len(self.timesteps)
        self._intervals: Any = None
        self._data: Any = None
        self._experts: Any = None
        self._grads: Any = None

    # lazily loaded inputs --------------------------------------------------------------------
    def intervals(self) -> Any:
        """The experts' intervals (``experts/intervals.json``, else ``intervals.json``) or None."""
        if self._intervals is None:
            from experts.intervals import Intervals

            for p in (self.run.experts_dir / "intervals.json", self.run.intervals_path):
                if p.is_file():
                    try:
                        self._intervals = Intervals.load(p)
                        break
                    except (ValueError, KeyError, json.JSONDecodeError) as exc:
                        log.warning("cannot read %s: %s", p, exc)
        return self._intervals

    def data(self) -> tuple[Any, Any]:
        """(training samples, held-out set or None): the experts' split when there are intervals."""
        if self._data is None:
            iv = self.intervals()
            if iv is not None:
                from nas.commands.experts import experts_data

                self._data = experts_data(self.cfg, self.run, self.base, iv, self.device)
            else:
                from nas.data import encode_latents, load_dataset

                images = load_dataset(self.cfg.data)  # (N,C,H,W) in [-1,1]
                if self.base.vae is not None:
                    images = encode_latents(images, self.base.vae, device=self.device)
                self._data = (images, None)
        return self._data

    def experts(self) -> tuple[Any, list[Any]]:
        if self._experts is None:
            from experts.training import load_experts

            self._experts = load_experts(self.run.experts_dir, device=self.device)
        return self._experts

    def has_experts(self) -> bool:
        return (self.run.experts_dir / "intervals.json").is_file()

    def taylor_gradients(self) -> Any:
        if self._grads is None:
            from benchmarks.static_pruning import taylor_gradients

            b = self.cfg.bench
            train, _ = self.data()
            self._grads = taylor_gradients(self.base.unet, train, self.base.scheduler_config,
                                           num_batches=b.static_taylor_batches,
                                           batch_size=self.cfg.experts.finetune_batch_size, seed=self.cfg.seed,
                                           unet_kwargs=self.base.unet_kwargs if self.base.encoder_hidden_states is not None else None)
        return self._grads

    def generate(self, model: Any, num_images: int, seed: int, num_steps: int, batch_size: int | None = None,
                 progress: bool | None = None) -> torch.Tensor:
        from nas.sampling import generate

        b = self.base
        return generate(model, self.scheduler, num_images=num_images, num_steps=num_steps,
                        batch_size=batch_size or self.cfg.sampling.batch_size, seed=seed, device=self.device,
                        sample_shape=b.sample_shape, vae=b.vae, latent_scale=b.latent_scale,
                        encoder_hidden_states=b.encoder_hidden_states,
                        progress=self.progress if progress is None else progress)
