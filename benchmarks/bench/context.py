"""What the bench rows share: the run context (:class:`nas.run.RunContext`: base model, data,
experts, each loaded once), plus the Taylor gradients of static pruning.

See :mod:`benchmarks.bench`.
"""

from __future__ import annotations

import logging
from typing import Any

from nas.config import ExperimentConfig
from nas.run import RunContext, RunDir

log = logging.getLogger(__name__)

__all__ = ["BenchContext"]


class BenchContext(RunContext):
    """The run context of one bench call, with the Taylor gradients static pruning ranks by.

    The base model, its sampling scheduler, the visited timesteps and the base model's MACs are
    loaded by the constructor: every row needs them.
    """

    def __init__(self, cfg: ExperimentConfig, *, device: Any = None, progress: bool = True,
                 run: RunDir | None = None) -> None:
        super().__init__(cfg, device=device, progress=progress, run=run)
        for shared in ("base", "scheduler", "timesteps", "base_macs_per_call"):  # in this order
            getattr(self, shared)
        self._grads: Any = None

    def taylor_gradients(self) -> Any:
        """First-order Taylor gradients of the base UNet on the training data (computed once)."""
        if self._grads is None:
            from benchmarks.static_pruning import taylor_gradients

            b = self.cfg.bench
            train, _ = self.data()
            self._grads = taylor_gradients(self.base.unet, train, self.base.scheduler_config,
                                           num_batches=b.static_taylor_batches,
                                           batch_size=self.cfg.experts.finetune_batch_size, seed=self.cfg.seed,
                                           unet_kwargs=self.base.unet_kwargs if self.base.encoder_hidden_states is not None else None,
                                           labels=self.train_condition().get("labels"))
        return self._grads
