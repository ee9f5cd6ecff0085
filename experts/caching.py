"""DeepCache: reuse of a UNet's deep features across adjacent sampling steps.

The method of Ma, Fang and Wang, "DeepCache: Accelerating Diffusion Models for Free" (CVPR 2024,
arXiv:2312.00858), training-free, for diffusers ``UNet2DModel`` and ``UNet2DConditionModel``.

A UNet's skip connections ("branches") are numbered in the order the down path produces them:
branch 0 is ``conv_in``'s output (the shallowest), then one per down layer (resnet, with its
attention when the block has one) and one per downsampler. The up path consumes them in reverse:
the last up resnet concatenates branch 0. With ``cache_interval`` N and branch m, step i of a
trajectory is

- a *full* step when ``i % N == 0``: the whole UNet runs, and the outputs of the modules a cached
  step skips are kept (among them the feature entering the up resnet that consumes branch m, the
  paper's ``F_cache = U_{m+1}(.)``);
- a *cached* step otherwise: the time embedding, ``conv_in``, the down layers up to branch m, then
  the up resnet consuming branch m on ``concat(F_cache, fresh branch m)`` and every up layer after
  it run; the deeper down layers, the mid block and the earlier up layers return what they
  returned at the last full step.

This is the paper's uniform 1:N strategy (its helper's ``skip_mode='uniform'``; the non-uniform
variant is not implemented). Branch numbering matches the paper's ``cache_branch_id`` on SD.

The ``deepcache`` package (0.1.1) imports with diffusers 0.42.1 and, where its branch numbering
applies, samples bit for bit what :class:`CachedUNet` samples; but its ``DeepCacheSDHelper`` needs
a pipeline (the step index comes from ``pipe.scheduler.timesteps``), patches the shared UNet for as
long as it is enabled, and maps ``cache_branch_id`` to (block, layer) assuming SD's three skips per
down block (with ``layers_per_block=1`` ids 2 and 5 repeat ids 1 and 3 plus a wasted downsampler).
:class:`CachedUNet` patches the skipped modules only during its own cached calls.

MACs: :func:`cache_macs` counts one full call and one cached call with
:func:`search_spaces.macs.count_macs` (the cached call is traced on the branch path itself);
:meth:`CacheMacs.trajectory` adds them up over the steps of a trajectory.

Example:
    >>> from diffusers import UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
    ...     norm_num_groups=4, layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
    ...     up_block_types=("UpBlock2D",) * 2).eval()
    >>> num_branches(unet)  # conv_in, down resnet 0, downsampler 0, down resnet 1
    4
    >>> macs = cache_macs(unet, branch=0)
    >>> macs.cached < macs.full, macs.trajectory(num_steps=10, interval=3) == 4 * macs.full + 6 * macs.cached
    (True, True)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from experts.text_condition import condition_kwargs

log = logging.getLogger(__name__)

__all__ = [
    "CacheChoice",
    "CacheMacs",
    "CacheSettings",
    "CachedUNet",
    "branch_macs",
    "cache_macs",
    "cache_options",
    "choose_cache",
    "full_steps",
    "num_branches",
]


@dataclass(frozen=True)
class CacheSettings:
    """How a :class:`CachedUNet` caches.

    Attributes:
        interval: N: each full step is followed by N-1 cached steps (1: never cached).
        branch: the skip branch a cached step computes (0: ``conv_in``'s output, the shallowest
            and cheapest; ``num_branches(unet) - 1``: the deepest, only the mid block is reused).
    """

    interval: int = 1
    branch: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or int(self.interval) != self.interval or self.interval < 1:
            raise ValueError(f"cache interval must be an integer >= 1, got {self.interval!r}")
        if isinstance(self.branch, bool) or int(self.branch) != self.branch or self.branch < 0:
            raise ValueError(f"cache branch must be an integer >= 0, got {self.branch!r}")


def full_steps(num_steps: int, interval: int) -> int:
    """How many of ``num_steps`` steps are full with ``interval`` (steps 0, N, 2N, ...).

    Example:
        >>> full_steps(10, 3), full_steps(10, 1), full_steps(10, 20)
        (4, 10, 1)
    """
    return math.ceil(int(num_steps) / int(interval))


@dataclass(frozen=True)
class CacheMacs:
    """MACs of one full and of one cached UNet call (per ``batch_size`` samples as counted)."""

    full: int
    cached: int

    def trajectory(self, num_steps: int, interval: int) -> int:
        """MACs of a ``num_steps`` trajectory: the sum over its full and cached steps."""
        n_full = full_steps(num_steps, interval)
        return n_full * self.full + (int(num_steps) - n_full) * self.cached


# -- the UNet's branches ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Branch:
    """One skip connection: the down block producing it (-1: ``conv_in``), the modules of the
    down layer producing it, and where its consumer sits in the up path."""

    down_block: int
    down_modules: tuple[nn.Module, ...]
    up_block: int
    up_layer: int


def _layers(block: nn.Module, kind: str) -> list[tuple[nn.Module, ...]]:
    """The per-skip layers of a down/up block: (resnet, attention?) pairs, then the
    down-/upsamplers as one layer."""
    if hasattr(block, "skip_conv"):
        raise ValueError(f"{type(block).__name__} (a skip block) is not supported by DeepCache here")
    resnets = list(block.resnets)
    attentions = list(getattr(block, "attentions", None) or [])
    if attentions and len(attentions) != len(resnets):
        raise ValueError(f"{type(block).__name__}: {len(attentions)} attentions for {len(resnets)} resnets "
                         "is not supported by DeepCache here")
    layers = [(r, a) if attentions else (r,) for r, a in zip(resnets, attentions or resnets)]
    samplers = getattr(block, f"{kind}samplers", None)
    if samplers is not None:
        layers.append(tuple(samplers))
    return layers


def _branches(unet: nn.Module) -> list[_Branch]:
    """Every skip branch of ``unet``, shallowest first, each with its consumer in the up path."""
    for name in ("conv_in", "down_blocks", "up_blocks"):
        if not hasattr(unet, name):
            raise ValueError(f"{type(unet).__name__} has no {name}: not a diffusers 2D UNet")
    down: list[tuple[int, tuple[nn.Module, ...]]] = [(-1, ())]
    for b, block in enumerate(unet.down_blocks):
        down += [(b, layer) for layer in _layers(block, "down")]
    up = [(u, j) for u, block in enumerate(unet.up_blocks) for j in range(len(block.resnets))]
    for block in unet.up_blocks:
        _layers(block, "up")  # rejects unsupported up blocks
    if len(up) != len(down):
        raise ValueError(f"the up path consumes {len(up)} skips but the down path makes {len(down)}")
    # the up path consumes the skips last-made-first: the c-th up resnet takes skip len-1-c
    return [_Branch(b, mods, *up[len(up) - 1 - k]) for k, (b, mods) in enumerate(down)]


def num_branches(unet: nn.Module) -> int:
    """How many skip branches ``unet`` has (valid ``CacheSettings.branch`` values: 0 .. this-1)."""
    return len(_branches(unet))


def _skipped_modules(unet: nn.Module, branch: int) -> list[nn.Module]:
    """The modules a cached step with ``branch`` does not run (outermost ones only)."""
    branches = _branches(unet)
    if not 0 <= branch < len(branches):
        raise ValueError(f"cache branch {branch} out of range: this UNet has {len(branches)} (0..{len(branches) - 1})")
    chosen = branches[branch]
    skipped = [m for later in branches[branch + 1:] if later.down_block == chosen.down_block
               for m in later.down_modules]
    skipped += [blk for b, blk in enumerate(unet.down_blocks) if b > chosen.down_block]
    if getattr(unet, "mid_block", None) is not None:
        skipped.append(unet.mid_block)
    skipped += [blk for u, blk in enumerate(unet.up_blocks) if u < chosen.up_block]
    for layer in _layers(unet.up_blocks[chosen.up_block], "up")[: chosen.up_layer]:
        skipped += list(layer)
    return skipped


# -- the wrapper -----------------------------------------------------------------------------------


class _Replay:
    """A skipped module's ``forward`` during a cached call: its output at the last full step."""

    def __init__(self, output: Any) -> None:
        self.output = output

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


def _first_timestep(timestep: Any) -> float:
    if isinstance(timestep, torch.Tensor):
        return float(timestep.reshape(-1)[0])
    return float(timestep)


class CachedUNet(nn.Module):
    """A diffusers 2D UNet sampled with DeepCache (module docstring): a drop-in ``unet(x, t, ...)``.

    Step ``i`` of a trajectory is full when ``i % settings.interval == 0``, else cached. Steps
    are counted per call: a call whose timestep is not below the previous call's, or whose
    sample has another shape or device, starts a new trajectory (step 0). So it expects one UNet
    call per sampling step with strictly decreasing timesteps (DDIM, DDPM, DPM-Solver++ multistep,
    Euler; a classifier-free-guidance batch is one call); :meth:`reset` starts a new trajectory
    explicitly.

    The wrapped UNet is shared, not copied; outside this wrapper's own calls it is untouched.

    Args:
        unet: a ``UNet2DModel`` or ``UNet2DConditionModel`` (skip blocks are not supported).
        settings: the cache interval and branch.

    Raises:
        ValueError: the branch is out of range, or the UNet has blocks this does not support.
    """

    def __init__(self, unet: nn.Module, settings: CacheSettings | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.settings = settings or CacheSettings()
        self._skipped = _skipped_modules(unet, self.settings.branch)
        self._outputs: list[Any] | None = None
        self._outputs_key: tuple[Any, ...] | None = None
        self._step = -1
        self._last: tuple[float, tuple[Any, ...]] | None = None

    @property
    def config(self) -> Any:
        """The wrapped UNet's config."""
        return self.unet.config

    def reset(self) -> None:
        """Forget the cache; the next call is step 0 of a new trajectory (a full step)."""
        self._outputs, self._outputs_key, self._step, self._last = None, None, -1, None

    def forward(self, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        """One sampling step: a full or a cached UNet call (the class docstring says which)."""
        kwargs = condition_kwargs(self.unet, sample, kwargs)  # class labels -> prompts of a text model
        key = (tuple(sample.shape), sample.device)
        t = _first_timestep(timestep)
        new_trajectory = self._last is None or t >= self._last[0] or key != self._last[1]
        self._step = 0 if new_trajectory else self._step + 1
        self._last = (t, key)
        if self._step % self.settings.interval == 0:
            return self.full_call(sample, timestep, *args, **kwargs)
        return self.cached_call(sample, timestep, *args, **kwargs)

    def full_call(self, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        """The whole UNet, keeping what a later cached call reuses (nothing with interval 1)."""
        if self.settings.interval == 1:
            return self.unet(sample, timestep, *args, **kwargs)
        outputs: list[Any] = [None] * len(self._skipped)

        def keeper(i: int) -> Any:
            def keep(_m: nn.Module, _a: Any, out: Any) -> None:
                outputs[i] = out
            return keep

        handles = [m.register_forward_hook(keeper(i)) for i, m in enumerate(self._skipped)]
        try:
            out = self.unet(sample, timestep, *args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        self._outputs, self._outputs_key = outputs, (tuple(sample.shape), sample.device)
        return out

    def cached_call(self, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        """The shallow branch only, the skipped modules replaying the last full call's outputs.

        Raises:
            RuntimeError: no full call of the same sample shape and device came before.
        """
        if self._outputs is None or self._outputs_key != (tuple(sample.shape), sample.device):
            raise RuntimeError("a cached DeepCache step needs a full step on a sample of the same shape and "
                               "device first (call reset() between trajectories)")
        with self._replaying():
            return self.unet(sample, timestep, *args, **kwargs)

    @contextmanager
    def _replaying(self) -> Iterator[None]:
        """Each skipped module's ``forward`` returns its kept output, for the ``with`` block only."""
        assert self._outputs is not None
        before = [m.__dict__.get("forward") for m in self._skipped]  # an instance forward (hooks) to restore
        try:
            for m, out in zip(self._skipped, self._outputs):
                m.forward = _Replay(out)
            yield
        finally:
            for m, fwd in zip(self._skipped, before):
                if fwd is None:
                    del m.forward
                else:
                    m.forward = fwd

    def __repr__(self) -> str:
        s = self.settings
        return f"CachedUNet({type(self.unet).__name__}, interval={s.interval}, branch={s.branch})"


# -- MACs and the choice of settings ---------------------------------------------------------------


class _CachedCall(nn.Module):
    """A cached call as a module of its own, for the MACs counter (which calls with keywords)."""

    def __init__(self, cached: CachedUNet) -> None:
        super().__init__()
        self.cached = cached

    def forward(self, sample: torch.Tensor, timestep: Any, **kwargs: Any) -> Any:
        return self.cached.cached_call(sample, timestep, **kwargs)


def _cached_call_macs(unet: nn.Module, branch: int, kwargs: dict[str, Any]) -> int:
    """MACs of a cached call with ``branch`` on ``kwargs``, traced after a full call on them."""
    from search_spaces.macs import count_macs

    probe = CachedUNet(unet, CacheSettings(interval=2, branch=branch))
    with torch.no_grad():
        probe.full_call(**kwargs)
    return count_macs(_CachedCall(probe), kwargs, by_module=False).total


def cache_macs(unet: nn.Module, branch: int, batch_size: int = 1, encoder_seq_len: int = 77) -> CacheMacs:
    """MACs of one full and one cached call of ``unet`` with ``branch`` (per ``batch_size``
    samples, on :func:`search_spaces.macs.unet_example_inputs`)."""
    return branch_macs(unet, batch_size, encoder_seq_len, branches=[branch])[0]


def branch_macs(unet: nn.Module, batch_size: int = 1, encoder_seq_len: int = 77,
                branches: list[int] | None = None) -> list[CacheMacs]:
    """:class:`CacheMacs` of ``unet`` for each branch in ``branches`` (default: every branch,
    shallowest first); the full call is counted once."""
    from search_spaces.macs import count_macs, unet_example_inputs

    kwargs = unet_example_inputs(unet, batch_size=batch_size, encoder_seq_len=encoder_seq_len)
    full = count_macs(unet, kwargs, by_module=False).total
    chosen = range(num_branches(unet)) if branches is None else branches
    return [CacheMacs(full=full, cached=_cached_call_macs(unet, int(b), kwargs)) for b in chosen]


@dataclass(frozen=True)
class CacheChoice:
    """One DeepCache configuration over a trajectory of ``num_steps`` steps, with its MACs."""

    settings: CacheSettings
    macs: CacheMacs
    num_steps: int

    @property
    def trajectory_macs(self) -> int:
        """MACs of the trajectory (per sample when ``macs`` are)."""
        return self.macs.trajectory(self.num_steps, self.settings.interval)

    @property
    def ratio(self) -> float:
        """Trajectory MACs as a fraction of the uncached trajectory (every step full)."""
        return self.trajectory_macs / (self.num_steps * self.macs.full)


def cache_options(per_branch: list[CacheMacs], num_steps: int) -> list[CacheChoice]:
    """Every (interval, branch) for ``num_steps`` steps: interval 1 (no caching) once, then
    intervals 2 .. ``num_steps`` with each branch (a longer interval equals ``num_steps``).

    Example:
        >>> opts = cache_options([CacheMacs(100, 10), CacheMacs(100, 40)], num_steps=4)
        >>> [(o.settings.interval, o.settings.branch, o.ratio) for o in opts][:3]
        [(1, 0, 1.0), (2, 0, 0.55), (2, 1, 0.7)]
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    options = [CacheChoice(CacheSettings(1, 0), per_branch[0], int(num_steps))]
    for interval in range(2, int(num_steps) + 1):
        options += [CacheChoice(CacheSettings(interval, b), m, int(num_steps)) for b, m in enumerate(per_branch)]
    return options


def choose_cache(per_branch: list[CacheMacs], num_steps: int, budget: float) -> CacheChoice | None:
    """The option whose trajectory MACs ratio is the largest at or under ``budget`` (ties: the
    shorter interval, then the deeper branch), or None when even the cheapest is over it.

    Example:
        >>> c = choose_cache([CacheMacs(100, 10), CacheMacs(100, 40)], num_steps=4, budget=0.6)
        >>> c.settings, c.ratio
        (CacheSettings(interval=2, branch=0), 0.55)
        >>> choose_cache([CacheMacs(100, 10)], num_steps=4, budget=0.2) is None
        True
    """
    feasible = [o for o in cache_options(per_branch, num_steps) if o.ratio <= float(budget) + 1e-12]
    if not feasible:
        return None
    return max(feasible, key=lambda o: (o.ratio, -o.settings.interval, o.settings.branch))
