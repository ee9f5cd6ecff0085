"""Sliced sub-networks: run only the active channels and layers of the supernet's weights.

A masked pass of :class:`~search_spaces.ElasticUNet` always costs the full model: the masks
zero channels, they do not remove them. :func:`build_sliced` instead returns a module tree of
the arch in which every elastic layer computes with a *slice* of the supernet's weight,
taken when it is called (Once-for-All's weight sharing), and skipped layers are removed as in
:func:`~search_spaces.materialize.apply_arch`. A pass costs the arch's MACs.

Why it is never stale: the tree is a shallow clone of the supernet's UNet whose modules share
the supernet's own parameter and buffer dictionaries, and the sliced layers index those
parameters on every call. Optimizer steps, ``load_state_dict`` and ``.to()`` (which replace
tensors in place or in those dictionaries) are seen at once, and gradients flow into the full
weights. Only the module *structure* is fixed at build time: replacing a module or an
attention processor of the supernet's UNet needs a rebuild.

Exactness is the masked supernet's argument read the other way round: a masked channel
contributes zero, so dropping it changes only the order of float sums.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces._arch import Arch
from search_spaces._importance import ff_in, ff_out
from search_spaces.materialize import ShortcutResnet, remove_layers
from search_spaces.unet_space import UNetSpace

__all__ = ["SlicedCache", "SlicedConv2d", "SlicedGroupNorm", "SlicedLinear", "build_sliced", "clone_modules"]

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
# the supernet's per-instance state (skip/relaxed forward overrides and their markers)
_INSTANCE_STATE = ("forward", "_diffnas_keep", "_diffnas_skip")


class SlicedConv2d(nn.Module):
    """``full`` restricted to its first ``out_channels`` outputs and ``in_channels`` inputs
    (None: all), sliced from ``full``'s live weights at each call."""

    def __init__(self, full: nn.Conv2d, *, out_channels: int | None = None, in_channels: int | None = None) -> None:
        super().__init__()
        self.full = full
        self.out_channels = out_channels
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.full.weight, self.full.bias
        if self.out_channels is not None:
            w = w[: self.out_channels]
            b = b[: self.out_channels] if b is not None else None
        if self.in_channels is not None:
            w = w[:, : self.in_channels]
        return self.full._conv_forward(x, w, b)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, in_channels={self.in_channels}"


class SlicedLinear(nn.Module):
    """``full`` restricted to its first ``out_features`` outputs (of each half when
    ``halves``: the (scale, shift) or (value, gate) projections) and first ``in_features``
    inputs (None: all), sliced from ``full``'s live weights at each call."""

    def __init__(self, full: nn.Linear, *, out_features: int | None = None, in_features: int | None = None,
                 halves: bool = False) -> None:
        super().__init__()
        if halves and out_features is None:
            raise ValueError("halves needs out_features")
        self.full = full
        self.out_features = out_features
        self.in_features = in_features
        self.halves = halves

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.full.weight, self.full.bias
        if self.in_features is not None:
            w = w[:, : self.in_features]
        n = self.out_features
        if n is not None and self.halves:
            half = self.full.out_features // 2
            w = torch.cat((w[:n], w[half: half + n]))
            b = torch.cat((b[:n], b[half: half + n])) if b is not None else None
        elif n is not None:
            w = w[:n]
            b = b[:n] if b is not None else None
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, in_features={self.in_features}, halves={self.halves}"


class SlicedGroupNorm(nn.Module):
    """``full`` on its first ``num_channels`` channels in ``num_groups`` groups (whole groups
    are kept, so each group's statistics are unchanged)."""

    def __init__(self, full: nn.GroupNorm, num_channels: int, num_groups: int) -> None:
        super().__init__()
        self.full = full
        self.num_channels = num_channels
        self.num_groups = num_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b, c = self.full.weight, self.full.bias, self.num_channels
        return F.group_norm(x, self.num_groups, w[:c] if w is not None else None,
                            b[:c] if b is not None else None, self.full.eps)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, num_groups={self.num_groups}"


def clone_modules(root: nn.Module) -> nn.Module:
    """A shallow clone of ``root``'s module tree: new module objects (no hooks, none of the
    supernet's forward overrides) that share ``root``'s parameter and buffer dictionaries."""
    memo: dict[int, nn.Module] = {}

    def clone(m: nn.Module) -> nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        new = object.__new__(type(m))
        state = dict(m.__dict__)
        for key in _INSTANCE_STATE:
            state.pop(key, None)
        for key in _HOOK_DICTS:
            if key in state:
                state[key] = OrderedDict()
        memo[id(m)] = new
        state["_modules"] = type(m._modules)(
            (k, clone(c) if c is not None else None) for k, c in m._modules.items())
        new.__dict__.update(state)
        return new

    return clone(root)


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if name.isdigit():
        parent[int(name)] = new  # a ModuleList slot
    else:
        setattr(parent, name, new)


def _slice_resnet(resnet: nn.Module, width: int, group_size: int) -> None:
    full = resnet.conv2.in_channels
    resnet.conv1 = SlicedConv2d(resnet.conv1, out_channels=width)
    if resnet.time_emb_proj is not None:
        halves = resnet.time_emb_proj.out_features == 2 * full  # scale_shift
        resnet.time_emb_proj = SlicedLinear(resnet.time_emb_proj, out_features=width, halves=halves)
    resnet.norm2 = SlicedGroupNorm(resnet.norm2, width, width // group_size)
    resnet.conv2 = SlicedConv2d(resnet.conv2, in_channels=width)


def _slice_heads(attn: nn.Module, heads: int) -> None:
    head_dim = attn.to_q.out_features // attn.heads
    inner = heads * head_dim
    for name in ("to_q", "to_k", "to_v"):
        setattr(attn, name, SlicedLinear(getattr(attn, name), out_features=inner))
    attn.to_out[0] = SlicedLinear(attn.to_out[0], in_features=inner)
    attn.heads = heads
    attn.inner_dim = inner
    if hasattr(attn, "inner_kv_dim"):
        attn.inner_kv_dim = inner


def _slice_ffn(ff: nn.Module, inner: int) -> None:
    fin, fout = ff_in(ff), ff_out(ff)
    gated = fin.out_features == 2 * fout.in_features  # GEGLU/SwiGLU: value and gate halves
    ff.net[0].proj = SlicedLinear(fin, out_features=inner, halves=gated)
    last = max(i for i, m in enumerate(ff.net) if m is fout)
    ff.net[last] = SlicedLinear(fout, in_features=inner)


def build_sliced(unet: nn.Module, space: UNetSpace, arch: Mapping[str, Any]) -> nn.Module:
    """The sub-network ``arch`` of ``unet`` (the supernet's UNet), sliced (module docstring).

    The result is called like the UNet. It shares ``unet``'s parameters; building it copies
    no tensor.
    """
    arch = Arch(arch)
    space.validate(arch)
    model = clone_modules(unet)
    dims = {d.name: d for d in space.dimensions()}
    # widths first: module paths still match the space's sites
    for site in space.sites:
        v = arch[site.name]
        if site.kind not in ("width", "heads", "ffn") or v == dims[site.name].full:
            continue
        m = model.get_submodule(site.module)
        if site.kind == "width" and int(v) == 0:
            _set(model, site.module, ShortcutResnet.from_resnet(m))
        elif site.kind == "width":
            _slice_resnet(m, int(v), site.unit)
        elif site.kind == "heads":
            _slice_heads(m, int(v))
        else:
            _slice_ffn(m, int(v))
    remove_layers(model, space, arch)
    return model


class SlicedCache:
    """Sliced sub-networks of one supernet UNet, built on first use, least recently used
    dropped first. Holds module structure only (the weights are the UNet's, read live)."""

    def __init__(self, unet: nn.Module, space: UNetSpace) -> None:
        self.unet = unet
        self.space = space
        self._subs: OrderedDict[Arch, nn.Module] = OrderedDict()

    def get(self, arch: Arch, max_size: int) -> nn.Module:
        """The sub-network of ``arch`` (validated when built), keeping at most ``max_size``."""
        sub = self._subs.get(arch)
        if sub is None:
            sub = self._subs[arch] = build_sliced(self.unet, self.space, arch)
            while len(self._subs) > max(1, max_size):
                self._subs.popitem(last=False)
        else:
            self._subs.move_to_end(arch)
        return sub

    def clear(self) -> None:
        """Drop every sub-network."""
        self._subs.clear()

    def __len__(self) -> int:
        return len(self._subs)

    def __iter__(self) -> Iterator[Arch]:
        return iter(self._subs)
