"""The mixture of interval experts: each denoising step goes to the expert owning its timestep.

:class:`MixtureOfExperts` holds the :class:`~experts.intervals.Intervals` and one expert per
interval. An expert is either an :class:`~search_spaces.ElasticUNet` run at an arch (several
intervals may share one supernet at different archs) or a plain diffusers UNet (a
materialised, physically pruned sub-network, or an unpruned model). To evaluate (no gradients,
or eval mode) the mixture calls the supernet's cached *sliced* sub-network of the arch, which
costs the arch's MACs and leaves the supernet's own state alone; while training it switches
the supernet's masks with ``set_active`` before each call that needs another arch (see
:attr:`MixtureOfExperts.sliced_eval`). Timesteps are in *training* units, so
the mixture works with any scheduler and any number of sampling steps; it may carry a
:class:`~experts.schedule.StepSchedule` (its allocation's), which it saves and which a
:class:`~experts.pipeline.MixturePipeline` samples along by default. A batch whose samples
sit in different intervals (e.g. a training batch) is split per expert and reassembled in the
original order.

The saved folder (:meth:`MixtureOfExperts.save_pretrained`) is described in :mod:`experts.mixture_folder`.

Example:
    >>> import torch
    >>> from diffusers import UNet2DModel
    >>> from experts.intervals import Intervals
    >>> def unet():
    ...     return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
    ...         layers_per_block=1, norm_num_groups=4, add_attention=False,
    ...         down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    >>> a, b = unet(), unet()
    >>> moe = MixtureOfExperts(Intervals(1000, (500,)), [a, b])
    >>> x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    >>> out = moe(x, t).sample
    >>> bool(torch.allclose(out[1:], b(x[1:], t[1:]).sample, atol=1e-6))
    True
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin  # noqa: F401  (the name must be visible here: see _LOADABLE_NOTE)
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from experts.allocation import Allocation
from experts.intervals import Intervals
from experts.schedule import StepSchedule
from experts.text_condition import call_denoiser

# experts/pipeline.py imports is_mixture_folder from here; it lives in experts.mixture_folder
from experts.mixture_folder import is_mixture_folder  # noqa: F401
from experts.mixture_folder import (
    MIXTURE_FILE,
    MixtureMeta,
    is_supernet_expert,
    read_mixture_folder,
    save_experts,
    swap_in,
)
from search_spaces.base import Arch
from search_spaces.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["MixtureOfExperts"]


# _LOADABLE_NOTE: diffusers' DiffusionPipeline.from_pretrained resolves a component recorded as
# ["experts.mixture", "MixtureOfExperts"] by looking up, in *this* module, the names of the
# classes it knows how to load ("ModelMixin", ...) and checking issubclass. So the mixture
# subclasses ModelMixin and this module binds the name ModelMixin; diffusers then calls
# MixtureOfExperts.from_pretrained(folder/mixture, **loading_kwargs).


def _slice_kwargs(value: Any, idx: torch.Tensor, batch: int) -> Any:
    """Select samples ``idx`` from every per-sample tensor in ``value`` (dicts recursively)."""
    if torch.is_tensor(value) and value.ndim >= 1 and value.shape[0] == batch:
        return value[idx.to(value.device)]
    if isinstance(value, Mapping):
        return {k: _slice_kwargs(v, idx, batch) for k, v in value.items()}
    return value


def _timestep_vector(timestep: Any, batch: int) -> torch.Tensor | None:
    """Per-sample timesteps (float64, CPU), or None when the whole batch shares one timestep."""
    if not torch.is_tensor(timestep):
        return None
    if timestep.ndim == 0 or timestep.numel() == 1:
        return None
    if timestep.ndim != 1 or timestep.shape[0] != batch:
        raise ValueError(f"timestep must be a scalar or shape ({batch},), got {tuple(timestep.shape)}")
    return timestep.detach().to("cpu", torch.float64)


def _resolve_schedule(intervals: Intervals, allocation: Allocation | None,
                      schedule: StepSchedule | None) -> StepSchedule | None:
    """The schedule given, else the allocation's; checked against the intervals and the allocation."""
    if allocation is not None and allocation.schedule is not None:
        if schedule is not None and schedule != allocation.schedule:
            raise ValueError("the schedule differs from the allocation's")
        schedule = allocation.schedule
    if schedule is not None and schedule.intervals != intervals:
        raise ValueError(f"the schedule's intervals {list(schedule.intervals.boundaries)} differ from the "
                         f"mixture's {list(intervals.boundaries)}")
    return schedule


class MixtureOfExperts(ModelMixin, ConfigMixin):
    """One expert per timestep interval; ``forward`` routes each sample to its expert.

    Args:
        intervals: the experts' timestep intervals (training units).
        experts: one model per interval (the same object may serve several intervals, e.g.
            one supernet at different archs).
        archs: per interval, the arch a supernet expert runs at; ``None`` (or a ``None``
            entry) leaves the supernet as it is (full arch when fresh, or whatever the caller
            set, e.g. a relaxed arch while the router trains). Must be ``None`` for plain
            (materialised) experts.
        allocation: the allocation the mixture was built from (kept and saved), optional.
        info: free-form provenance saved in ``mixture.json``.
        schedule: the step schedule the mixture samples along by default (saved; a
            :class:`~experts.pipeline.MixturePipeline` runs it when called without steps);
            default: the allocation's, if it has one.

    Raises:
        ValueError: counts that differ from the intervals, an arch for a plain expert, or an
            allocation or schedule for other intervals (or a schedule other than the allocation's).
    """

    config_name = "config.json"

    #: evaluate supernet experts sliced (only the arch's channels and layers run: a call costs
    #: the arch's MACs, not the full model's) under ``torch.no_grad``/``inference_mode`` or when
    #: the mixture is in eval mode; a training-mode mixture with gradients on switches masks.
    #: Equal to the masked pass up to float summation order. False (on the class or on one
    #: mixture): always switch masks, as before.
    sliced_eval: bool = True

    def __init__(
        self,
        intervals: Intervals,
        experts: Sequence[nn.Module],
        archs: Sequence[Mapping[str, Any] | None] | None = None,
        allocation: Allocation | None = None,
        info: Mapping[str, Any] | None = None,
        schedule: StepSchedule | None = None,
    ) -> None:
        super().__init__()
        n = intervals.num_intervals
        if len(experts) != n:
            raise ValueError(f"got {len(experts)} experts for {n} intervals")
        archs = list(archs) if archs is not None else [None] * n
        if len(archs) != n:
            raise ValueError(f"got {len(archs)} archs for {n} intervals")
        unique: list[nn.Module] = []
        owner: list[int] = []
        for e in experts:
            for j, u in enumerate(unique):
                if u is e:
                    owner.append(j)
                    break
            else:
                owner.append(len(unique))
                unique.append(e)
        checked: list[Arch | None] = []
        for k, (e, a) in enumerate(zip(experts, archs)):
            if a is None:
                checked.append(None)
                continue
            if not is_supernet_expert(e):
                raise ValueError(f"interval {k}: an arch is given but the expert ({type(e).__name__}) is not a supernet")
            a = Arch(a)
            e.space.validate(a)
            checked.append(a)
        if allocation is not None and allocation.intervals != intervals:
            raise ValueError("the allocation's intervals differ from the mixture's")
        self.intervals = intervals
        self.experts = nn.ModuleList(unique)
        self.expert_of_interval: tuple[int, ...] = tuple(owner)
        self.archs: list[Arch | None] = checked
        self.allocation = allocation
        self.schedule: StepSchedule | None = _resolve_schedule(intervals, allocation, schedule)
        self.info: dict[str, Any] = dict(info or {})
        self._boundaries = torch.tensor([float(b) for b in intervals.boundaries], dtype=torch.float64)
        self._macs_cache: dict[int, int] = {}
        cfg = getattr(unique[0], "config", None)
        shape = {}
        for key in ("sample_size", "in_channels", "out_channels", "cross_attention_dim"):
            v = getattr(cfg, key, None) if cfg is not None else None
            if v is not None:
                shape[key] = list(v) if isinstance(v, (tuple, list)) else v
        self.register_to_config(num_train_timesteps=intervals.num_train_timesteps,
                                boundaries=list(intervals.boundaries), **shape)

    # ------------------------------------------------------------------ routing
    @property
    def num_experts(self) -> int:
        """Number of intervals (an expert may be shared by several)."""
        return self.intervals.num_intervals

    def expert_for(self, k: int) -> nn.Module:
        """The model serving interval ``k``."""
        return self.experts[self.expert_of_interval[k]]

    def set_arch(self, k: int, arch: Mapping[str, Any] | None) -> None:
        """Change the arch interval ``k``'s (supernet) expert runs at (``None``: leave as is)."""
        e = self.expert_for(k)
        if arch is not None:
            if not is_supernet_expert(e):
                raise ValueError(f"interval {k}: expert {type(e).__name__} is not a supernet")
            arch = Arch(arch)
            e.space.validate(arch)
        self.archs[k] = arch

    def interval_index(self, timestep: Any) -> torch.Tensor:
        """Interval of each timestep (int64 tensor, same shape as ``timestep``)."""
        t = torch.as_tensor(timestep).detach().to("cpu", torch.float64)
        T = self.intervals.num_train_timesteps
        if t.numel() and (float(t.min()) < 0 or float(t.max()) >= T + 1e-6):
            raise ValueError(f"timestep outside [0, {T}): {t.flatten()[:4].tolist()}")
        return torch.bucketize(t, self._boundaries, right=True)

    def sliced_now(self) -> bool:
        """Whether a supernet expert runs sliced on the next call (see :attr:`sliced_eval`)."""
        return self.sliced_eval and not (torch.is_grad_enabled() and self.training)

    def _activate(self, k: int) -> nn.Module:
        """The model to call for interval ``k``: a supernet expert's cached sliced sub-network
        at the interval's arch when :meth:`sliced_now` (the supernet's own state is left as it
        is), else the supernet switched (masked) to that arch, or the plain expert."""
        e = self.expert_for(k)
        a = self.archs[k]
        if a is None:
            return e
        if self.sliced_now() and hasattr(e, "sliced"):
            return e.sliced(a)
        if getattr(e, "active", None) != a or getattr(e, "mode", "masked") != "masked":
            e.set_active(a)
        return e

    def forward(self, sample: torch.Tensor, timestep: Any, *args: Any, return_dict: bool = True,
                **kwargs: Any) -> Any:
        """Run each sample through the expert owning its timestep.

        Args:
            sample: (B, C, H, W) noisy input.
            timestep: a number, a 0-dim/1-element tensor (whole batch) or a (B,) tensor.
            args, kwargs: passed to the experts (per-sample tensors are split with the batch).
            return_dict: ``UNet2DOutput(sample=...)`` if true, else a 1-tuple.
        """
        batch = sample.shape[0]
        per_sample = _timestep_vector(timestep, batch)
        if per_sample is None:  # the whole batch at one timestep: one call, exactly the expert's
            t0 = float(torch.as_tensor(timestep).detach().reshape(-1)[0]) if torch.is_tensor(timestep) else float(timestep)
            k = int(self.interval_index(t0))
            out = call_denoiser(self._activate(k), sample, timestep, *args, **kwargs)  # labels -> its prompts
            out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, (tuple, list)) else out)
        else:
            owner = self.interval_index(per_sample)  # (B,)
            out = None
            for k in torch.unique(owner).tolist():
                idx = torch.nonzero(owner == k).flatten()  # (b,)
                idx_dev = idx.to(sample.device)
                sub_kw = {key: _slice_kwargs(v, idx, batch) for key, v in kwargs.items()}
                sub_args = tuple(_slice_kwargs(v, idx, batch) for v in args)
                res = call_denoiser(self._activate(int(k)), sample[idx_dev], timestep[idx.to(timestep.device)],
                                    *sub_args, **sub_kw)
                res = res.sample if hasattr(res, "sample") else (res[0] if isinstance(res, (tuple, list)) else res)
                if out is None:
                    out = res.new_empty((batch, *res.shape[1:]))  # (B,C',H,W)
                out[idx_dev] = res
        if not return_dict:
            return (out,)
        return UNet2DOutput(sample=out)

    # ------------------------------------------------------------------ cost
    def macs_per_expert(self) -> list[int]:
        """MACs of one call (batch 1) of each interval's expert at its arch."""
        from search_spaces.macs import count_unet_macs

        out = []
        for k in range(self.num_experts):
            e = self.expert_for(k)
            if is_supernet_expert(e):
                arch = self.archs[k] if self.archs[k] is not None else e.active
                if arch is None:
                    raise ValueError(f"interval {k}: the supernet is in a relaxed state; its MACs are not fixed")
                out.append(int(e.space.macs(arch)))
            else:
                j = self.expert_of_interval[k]
                if j not in self._macs_cache:
                    self._macs_cache[j] = int(count_unet_macs(e, batch_size=1))
                out.append(self._macs_cache[j])
        return out

    def timesteps(self) -> list[int] | None:
        """The timesteps of the mixture's step schedule (descending), or None without one."""
        return None if self.schedule is None else self.schedule.timesteps()

    def trajectory_macs(self, timesteps: Sequence[int | float] | None = None) -> int:
        """Sum over ``timesteps`` (a sampler's, training units; default: the mixture's schedule)
        of the serving expert's MACs.

        Raises:
            ValueError: no timesteps and no schedule.
        """
        if timesteps is None:
            timesteps = self.timesteps()
            if timesteps is None:
                raise ValueError("the mixture has no step schedule: pass the sampler's timesteps")
        per = self.macs_per_expert()
        return int(sum(per[self.intervals.index(float(t))] for t in timesteps))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_allocation(
        cls,
        allocation: Allocation,
        experts: str | Path | nn.Module | Sequence[nn.Module],
        *,
        materialize: bool = False,
        device: str | torch.device = "cpu",
        base: nn.Module | None = None,
    ) -> "MixtureOfExperts":
        """The mixture an allocation describes.

        Args:
            allocation: one arch per interval.
            experts: an experts folder written by ``diffnas train-experts`` (``expert_<k>/``),
                one supernet per interval, or one supernet shared by every interval (e.g.
                the base model's supernet for a static or searched allocation without experts).
            materialize: replace each supernet by a physically pruned copy at its arch
                (plain diffusers UNets: smaller and faster; what ``diffnas finetune`` tunes).
            base: the base model (a plain UNet), serving the allocation's ``base_intervals``;
                needed when it has any.

        Raises:
            ValueError: the allocation has base intervals and no ``base`` is given.
        """
        n = allocation.intervals.num_intervals
        if allocation.base_intervals and base is None:
            raise ValueError(f"the allocation serves intervals {list(allocation.base_intervals)} by the base model: "
                             "pass base=")
        if isinstance(experts, (str, Path)):
            from experts.expert_folder import load_experts

            intervals, models = load_experts(experts, device=device)
            if intervals != allocation.intervals:
                raise UserError(
                    f"the allocation's intervals {list(allocation.intervals.boundaries)} differ from the experts' "
                    f"{list(intervals.boundaries)} in {experts}; make the allocation for these experts"
                )
        elif isinstance(experts, nn.Module):
            models = [experts] * n
        else:
            models = list(experts)
        if len(models) != n:
            raise ValueError(f"got {len(models)} experts for {n} intervals")
        on_base = set(allocation.base_intervals)
        if materialize:
            cache: dict[tuple[int, Arch], nn.Module] = {}
            mats = []
            for k, (m, a) in enumerate(zip(models, allocation.archs)):
                if k in on_base:
                    mats.append(base)
                    continue
                key = (id(m), Arch(a))
                if key not in cache:
                    cache[key] = m.materialize(a).to(device).eval()
                mats.append(cache[key])
            return cls(allocation.intervals, mats, None, allocation)
        models = [base if k in on_base else m for k, m in enumerate(models)]
        archs = [None if k in on_base else a for k, a in enumerate(allocation.archs)]
        return cls(allocation.intervals, models, archs, allocation)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write the whole mixture to one folder (see the module docstring); safetensors only.

        The folder is written next to the target and swapped in at the end, so an interrupted
        save never leaves a half-written mixture under the final name.
        """
        if not safe_serialization:
            raise ValueError("the mixture is saved with safetensors only")
        path = Path(save_directory)
        tmp = path.with_name(path.name + ".saving")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        meta = MixtureMeta(self.intervals, save_experts(self.experts, tmp), self.expert_of_interval,
                           self._archs_to_save(), self.allocation, self.macs_per_expert(), self.info, self.schedule)
        (tmp / MIXTURE_FILE).write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True))
        self.intervals.save(tmp / "intervals.json")
        if self.schedule is not None:
            self.schedule.save(tmp / "schedule.json")
        if self.allocation is not None:
            self.allocation.save(tmp / "allocation.json")
        self.save_config(str(tmp))
        swap_in(tmp, path)

    def _archs_to_save(self) -> list[dict | None]:
        """Each interval's arch; a supernet without one is stored at the arch it runs at now."""
        archs: list[dict | None] = []
        for k in range(self.num_experts):
            e = self.expert_for(k)
            a = self.archs[k]
            if a is None and is_supernet_expert(e):
                if e.active is None:
                    raise ValueError(f"interval {k}: cannot save a supernet in a relaxed state; set an arch first")
                a = e.active  # what it runs at now: stored so that loading reproduces the samples
            archs.append(a.to_dict() if a is not None else None)
        return archs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None, **kwargs: Any) -> "MixtureOfExperts":
        """Load a folder written by :meth:`save_pretrained` (extra diffusers loading options are
        accepted and ignored, so ``MixturePipeline.from_pretrained`` can call this)."""
        f = read_mixture_folder(Path(pretrained_model_name_or_path), device=device, torch_dtype=torch_dtype)
        return cls(f.intervals, f.experts, f.archs, f.allocation, f.info, f.schedule)
