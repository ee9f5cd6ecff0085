"""The built-in elastic search space over a diffusers UNet, with analytic MACs.

Dimensions (names follow the module paths of the UNet):

- ``down.{b}.resnets.{j}.width`` (also ``mid.``/``up.``): inner channels of a ResNet block
  (conv1 out / time-embedding projection / norm2 / conv2 in), multiples of the GroupNorm
  group size so the pretrained normalisation groups stay intact;
- ``...attentions.{j}.heads`` (``Attention`` of ``UNet2DModel`` blocks) and, inside
  ``Transformer2DModel`` s, ``...attentions.{j}.blocks.{k}.attn1.heads`` / ``.attn2.heads`` /
  ``.ff.width``: attention heads and feed-forward width;
- ``down.{b}.layers.{j}.depth`` / ``up.{u}.layers.{i}.depth``: keep (True) or remove (False) a
  whole layer (ResNet + its attention). An up-block layer consumes the skip connection of
  exactly one down-block layer; the two are coupled (the up dimension is *tied* to the down
  one) and only layers whose input and output channels agree are removable;
- ``...attentions.{j}.depth`` and ``mid.resnets.{i}.depth`` (i >= 1): skip one residual
  attention / mid ResNet;
- width ``0`` (``SpaceOptions.branch_depth``, on by default): the ResNet's *residual branch* is
  dropped (norm1, conv1, time projection, norm2, conv2) and only its shortcut is kept, so the
  block computes ``shortcut(x) / output_scale_factor``. This is depth for the layers that
  cannot be removed outright (an up-block ResNet that changes the channel count, the only
  ResNet of a down block): without it a ``layers_per_block=1`` UNet keeps most of its
  non-MAC work (norms, activations) at any arch.

MACs follow the definition in :mod:`search_spaces.macs` and are computed analytically from one
per-module count of the full model: every elastic quantity is linear in its choice, so
``macs(arch)`` is exact for the materialised model and costs microseconds.

Example:
    >>> from diffusers import UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
    ...     layers_per_block=1, norm_num_groups=4, add_attention=False,
    ...     down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    >>> space = UNetSpace.from_unet(unet)
    >>> space.macs(space.smallest()) < space.macs(space.full())
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from search_spaces.base import Arch, Choice, Dimension, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = ["SpaceOptions", "UNetSpace", "Site", "CostBlock", "PAIR_RULE"]

PAIR_RULE = (
    "skip pairing: an up-block layer consumes its down-block partner's skip connection, "
    "so both are kept or both removed"
)


@dataclass(frozen=True)
class SpaceOptions:
    """What the built-in UNet space makes elastic.

    Attributes:
        width_fractions: ResNet inner widths (and head/FFN fractions) offered, as fractions of
            the full width; rounded to multiples of the GroupNorm group size.
        depth: removable layers (coupled down/up pairs, mid ResNets).
        heads: elastic attention heads.
        ffn: elastic feed-forward width in transformer blocks.
        attention_depth: removable attention modules.
        branch_depth: ResNet widths also offer ``0``: the residual branch is dropped and the
            shortcut kept (see the module docstring).
    """

    width_fractions: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0)
    depth: bool = True
    heads: bool = True
    ffn: bool = True
    attention_depth: bool = True
    branch_depth: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "SpaceOptions":
        """Options stored as JSON (lists for tuples). Files written before ``branch_depth``
        existed lack the key and mean ``branch_depth=False`` (their spaces had no width 0)."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown space option(s) {unknown}; known: {sorted(known)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        kw.setdefault("branch_depth", False)
        return cls(**kw)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        fr = tuple(float(f) for f in self.width_fractions)
        if not fr or any(not 0.0 < f <= 1.0 for f in fr):
            raise ValueError(f"width_fractions must be in (0, 1], got {list(fr)}")
        object.__setattr__(self, "width_fractions", fr)


@dataclass(frozen=True)
class Site:
    """One elastic dimension bound to the module(s) it controls.

    ``kind``: ``width`` (ResNet inner channels; ``module`` is the ResnetBlock2D), ``heads``
    (``module`` is an ``Attention``), ``ffn`` (``module`` is a ``FeedForward``), ``layer``
    (``modules`` = ResNet and optional attention of a down/up layer), ``attn_depth``
    (``module`` = attention or transformer), ``resnet_depth`` (a mid ResNet).
    ``full`` is the full size (channels, heads or FFN width), ``unit`` the size of one step.
    """

    name: str
    kind: str
    module: str
    full: int = 1
    unit: int = 1
    modules: tuple[str, ...] = ()
    container: str = ""  # ModuleList holding the layer (for removal)
    index: int = -1


@dataclass
class CostBlock:
    """MACs of one removable block: ``fixed`` plus, per elastic dim, a part linear in it."""

    fixed: float
    scaled: list[tuple[str, float, int]] = field(default_factory=list)  # (dim, macs at full, full)
    removed_by: tuple[str, ...] = ()


def _choices(full: int, unit: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """Sizes for ``fractions`` of ``full``, in multiples of ``unit``, at least one unit."""
    out = {full}
    for f in fractions:
        out.add(max(unit, int(round(f * full / unit)) * unit))
    return tuple(sorted(c for c in out if c <= full))


def _is_attention(m: nn.Module) -> bool:
    return type(m).__name__ == "Attention" and hasattr(m, "to_q")


def _is_transformer(m: nn.Module) -> bool:
    return hasattr(m, "transformer_blocks")


class _Builder:
    """Walks a diffusers UNet once and lists its elastic sites and cost blocks."""

    SUPPORTED_DOWN = {"DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D"}
    SUPPORTED_UP = {"UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D"}
    SUPPORTED_MID = {"UNetMidBlock2D", "UNetMidBlock2DCrossAttn", "NoneType"}

    def __init__(self, unet: nn.Module, opts: SpaceOptions) -> None:
        self.unet = unet
        self.opts = opts
        self.sites: list[Site] = []
        self.dims: list[Dimension] = []
        self.group_size: dict[str, int] = {}
        # cost block templates: (module paths whose MACs form the block, scaled parts, removers)
        self.blocks: list[tuple[tuple[str, ...], list[tuple[str, str]], tuple[str, ...]]] = []

    # ------------------------------------------------------------------ sites
    def _width(self, name: str, path: str, resnet: nn.Module) -> str | None:
        full = resnet.conv2.in_channels
        gs = full // resnet.norm2.num_groups
        choices = _choices(full, gs, self.opts.width_fractions)
        if self.opts.branch_depth:
            choices = (0,) + choices  # 0: residual branch dropped, shortcut kept
        self.group_size[name] = gs
        if len(choices) < 2:
            return None
        self.sites.append(Site(name, "width", path, full, gs))
        self.dims.append(Dimension(name, choices, "width"))
        return name

    def _heads(self, name: str, path: str, attn: nn.Module) -> str | None:
        heads = int(attn.heads)
        if not self.opts.heads or heads < 2:
            return None
        choices = _choices(heads, 1, self.opts.width_fractions)
        if len(choices) < 2:
            return None
        self.sites.append(Site(name, "heads", path, heads, 1))
        self.dims.append(Dimension(name, choices, "heads"))
        return name

    def _ffn(self, name: str, path: str, ff: nn.Module) -> str | None:
        out_linear = [m for m in ff.net if isinstance(m, nn.Linear)][-1]
        inner = out_linear.in_features
        if not self.opts.ffn or inner < 2:
            return None
        unit = max(1, inner // 16)
        choices = _choices(inner, unit, self.opts.width_fractions)
        if len(choices) < 2:
            return None
        self.sites.append(Site(name, "ffn", path, inner, unit))
        self.dims.append(Dimension(name, choices, "ffn"))
        return name

    def _attention_block(self, prefix: str, path: str, attn: nn.Module, removers: tuple[str, ...]) -> None:
        """Sites and cost block of an ``Attention`` or a ``Transformer2DModel``."""
        depth_dim = None
        if self.opts.attention_depth:
            depth_dim = f"{prefix}.depth"
            self.sites.append(Site(depth_dim, "attn_depth", path))
            self.dims.append(Dimension(depth_dim, (False, True), "depth"))
        rem = removers + ((depth_dim,) if depth_dim else ())
        scaled: list[tuple[str, str]] = []
        if _is_attention(attn):
            d = self._heads(f"{prefix}.heads", path, attn)
            if d:
                scaled.append((d, path))
        elif _is_transformer(attn):
            for k, blk in enumerate(attn.transformer_blocks):
                bpath, bname = f"{path}.transformer_blocks.{k}", f"{prefix}.blocks.{k}"
                for an in ("attn1", "attn2"):
                    a = getattr(blk, an, None)
                    if a is not None and _is_attention(a):
                        d = self._heads(f"{bname}.{an}.heads", f"{bpath}.{an}", a)
                        if d:
                            scaled.append((d, f"{bpath}.{an}"))
                ff = getattr(blk, "ff", None)
                if ff is not None:
                    d = self._ffn(f"{bname}.ff.width", f"{bpath}.ff", ff)
                    if d:
                        scaled.append((d, f"{bpath}.ff"))
        else:
            raise ValueError(f"unsupported attention module {type(attn).__name__} at {path}")
        self.blocks.append(((path,), scaled, rem))

    def _resnet_block(self, name: str, path: str, resnet: nn.Module, removers: tuple[str, ...]) -> None:
        d = self._width(f"{name}.width", path, resnet)
        scaled = [(d, p) for p in (f"{path}.conv1", f"{path}.time_emb_proj", f"{path}.conv2")] if d else []
        self.blocks.append(((path,), scaled, removers))

    # ------------------------------------------------------------------ walk
    def build(self) -> None:
        unet = self.unet
        for b, blk in enumerate(unet.down_blocks):
            if type(blk).__name__ not in self.SUPPORTED_DOWN:
                raise ValueError(
                    f"unsupported down block {type(blk).__name__} at down_blocks.{b}; supported: "
                    f"{sorted(self.SUPPORTED_DOWN)}"
                )
        for u, blk in enumerate(unet.up_blocks):
            if type(blk).__name__ not in self.SUPPORTED_UP:
                raise ValueError(
                    f"unsupported up block {type(blk).__name__} at up_blocks.{u}; supported: "
                    f"{sorted(self.SUPPORTED_UP)}"
                )
        pairs = self._pairs()
        layer_dims: dict[tuple[str, int, int], str] = {}
        if self.opts.depth:
            for (b, j), (u, i) in pairs.items():
                dn, up = f"down.{b}.layers.{j}.depth", f"up.{u}.layers.{i}.depth"
                layer_dims[("down", b, j)] = dn
                layer_dims[("up", u, i)] = up
        # down path
        for b, blk in enumerate(unet.down_blocks):
            atts = getattr(blk, "attentions", None)
            for j, resnet in enumerate(blk.resnets):
                dn = layer_dims.get(("down", b, j))
                path = f"down_blocks.{b}"
                if dn:
                    mods = (f"{path}.resnets.{j}",) + ((f"{path}.attentions.{j}",) if atts is not None else ())
                    self.sites.append(Site(dn, "layer", "", modules=mods, container=path, index=j))
                    self.dims.append(Dimension(dn, (False, True), "depth"))
                rem = (dn,) if dn else ()
                self._resnet_block(f"down.{b}.resnets.{j}", f"{path}.resnets.{j}", resnet, rem)
                if atts is not None:
                    self._attention_block(f"down.{b}.attentions.{j}", f"{path}.attentions.{j}", atts[j], rem)
        # mid
        mid = unet.mid_block
        if mid is not None:
            if type(mid).__name__ not in self.SUPPORTED_MID:
                raise ValueError(f"unsupported mid block {type(mid).__name__}")
            for i, resnet in enumerate(mid.resnets):
                rem: tuple[str, ...] = ()
                if i >= 1 and self.opts.depth and resnet.in_channels == resnet.out_channels:
                    dn = f"mid.resnets.{i}.depth"
                    self.sites.append(Site(dn, "resnet_depth", f"mid_block.resnets.{i}"))
                    self.dims.append(Dimension(dn, (False, True), "depth"))
                    rem = (dn,)
                self._resnet_block(f"mid.resnets.{i}", f"mid_block.resnets.{i}", resnet, rem)
            for i, attn in enumerate(getattr(mid, "attentions", None) or []):
                if attn is not None:
                    self._attention_block(f"mid.attentions.{i}", f"mid_block.attentions.{i}", attn, ())
        # up path
        for u, blk in enumerate(unet.up_blocks):
            atts = getattr(blk, "attentions", None)
            for i, resnet in enumerate(blk.resnets):
                up = layer_dims.get(("up", u, i))
                path = f"up_blocks.{u}"
                if up:
                    partner = next(k for k, v in pairs.items() if v == (u, i))
                    mods = (f"{path}.resnets.{i}",) + ((f"{path}.attentions.{i}",) if atts is not None else ())
                    self.sites.append(Site(up, "layer", "", modules=mods, container=path, index=i))
                    self.dims.append(
                        Dimension(up, (False, True), "depth",
                                  tied_to=f"down.{partner[0]}.layers.{partner[1]}.depth", rule=PAIR_RULE)
                    )
                rem = (up,) if up else ()
                self._resnet_block(f"up.{u}.resnets.{i}", f"{path}.resnets.{i}", resnet, rem)
                if atts is not None:
                    self._attention_block(f"up.{u}.attentions.{i}", f"{path}.attentions.{i}", atts[i], rem)

    def _pairs(self) -> dict[tuple[int, int], tuple[int, int]]:
        """Removable (down block, layer) -> (up block, layer) pairs, by simulating the skip stack."""
        unet = self.unet
        # stack entries: (kind, block, layer, channels)
        stack: list[tuple[str, int, int, int]] = [("conv_in", -1, -1, unet.conv_in.out_channels)]
        for b, blk in enumerate(unet.down_blocks):
            for j, r in enumerate(blk.resnets):
                stack.append(("layer", b, j, r.out_channels))
            if getattr(blk, "downsamplers", None) is not None:
                stack.append(("down", b, -1, -1))
        pairs: dict[tuple[int, int], tuple[int, int]] = {}
        down_resnets = {(b, j): r for b, blk in enumerate(unet.down_blocks) for j, r in enumerate(blk.resnets)}
        for u, blk in enumerate(unet.up_blocks):
            n = len(blk.resnets)
            segment, stack = stack[-n:], stack[:-n]
            for i, r in enumerate(blk.resnets):
                kind, b, j, skip_ch = segment[-(i + 1)]
                if kind != "layer":
                    continue
                d = down_resnets[(b, j)]
                hidden_ch = r.in_channels - skip_ch
                if d.in_channels == d.out_channels and hidden_ch == r.out_channels:
                    pairs[(b, j)] = (u, i)
        return pairs


class UNetSpace(SearchSpace):
    """The elastic search space of one diffusers UNet (built by :meth:`from_unet`).

    Args:
        sites: elastic sites (dimension name -> module binding).
        dims: the dimensions.
        blocks: MACs cost blocks of the full model (from one fvcore count).
        total_macs: MACs of one call of the full model.
        group_size: GroupNorm group size per width dimension (for error messages).
    """

    def __init__(
        self,
        sites: tuple[Site, ...],
        dims: tuple[Dimension, ...],
        blocks: tuple[CostBlock, ...],
        total_macs: int,
        group_size: Mapping[str, int],
        options: SpaceOptions,
    ) -> None:
        self.sites = sites
        self._dims = dims
        self.blocks = blocks
        self.total_macs = int(total_macs)
        self.group_size = dict(group_size)
        self.options = options
        self._site = {s.name: s for s in sites}
        self._dims_by_name()

    @classmethod
    def from_unet(
        cls,
        unet: nn.Module,
        options: SpaceOptions | None = None,
        *,
        encoder_seq_len: int = 77,
    ) -> "UNetSpace":
        """Discover the elastic dimensions of ``unet`` and count its MACs once (fvcore)."""
        from search_spaces.macs import unet_macs_by_module

        options = options or SpaceOptions()
        builder = _Builder(unet, options)
        builder.build()
        count = unet_macs_by_module(unet, batch_size=1, encoder_seq_len=encoder_seq_len)
        by_module = count.by_module
        blocks = []
        for paths, scaled, removers in builder.blocks:
            total = float(sum(by_module.get(p, 0) for p in paths))
            parts: dict[str, float] = {}
            for dim, p in scaled:
                parts[dim] = parts.get(dim, 0.0) + float(by_module.get(p, 0))
            fulls = {d.name: d.full for d in builder.dims}
            blocks.append(
                CostBlock(
                    fixed=total - sum(parts.values()),
                    scaled=[(d, m, int(fulls[d])) for d, m in parts.items()],
                    removed_by=tuple(r for r in removers if r),
                )
            )
        return cls(tuple(builder.sites), tuple(builder.dims), tuple(blocks), count.total,
                   builder.group_size, options)

    # ------------------------------------------------------------------ API
    def dimensions(self) -> tuple[Dimension, ...]:
        return self._dims

    def site(self, name: str) -> Site:
        """The module binding of dimension ``name``."""
        return self._site[name]

    def validate(self, arch: Mapping[str, Choice]) -> None:
        # a clearer message than "out of range" for the commonest mistake
        for name, gs in self.group_size.items():
            if name in arch and name in self._site and not isinstance(arch[name], bool):
                v = arch[name]
                if isinstance(v, int) and v % gs != 0:
                    raise ValueError(
                        f"{name}: width {v} is not a multiple of the GroupNorm group size {gs}; "
                        f"allowed choices are {list(self.dimension(name).choices)}"
                    )
        super().validate(arch)

    def macs(self, arch: Mapping[str, Choice]) -> int:
        total = float(self.total_macs)
        for blk in self.blocks:
            kept = all(bool(arch.get(r, True)) for r in blk.removed_by)
            if kept:
                for dim, m, full in blk.scaled:
                    total -= m * (1.0 - arch.get(dim, full) / full)
            else:  # the whole block is gone, at whatever width it had
                total -= blk.fixed + sum(m for _, m, _ in blk.scaled)
        return int(round(total))

    def macs_relaxed(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Expected MACs under independent relaxed choices (exact at one-hot weights)."""
        dims = self._dims_by_name()
        for name in weights:
            if name not in dims or dims[name].tied_to is not None:
                raise ValueError(f"unknown or tied dimension {name!r} in relaxed weights")

        def expect(name: str, as_fraction_of: int | None = None) -> torch.Tensor | float:
            d = dims[name]
            root = d.tied_to or name
            if root not in weights:
                return 1.0
            w = weights[root].to(torch.float64)
            if isinstance(d.full, bool):
                return w[1]  # P(keep): choices are (False, True)
            vals = torch.tensor([c / as_fraction_of for c in d.choices], dtype=torch.float64)
            return (w * vals).sum()

        total = torch.tensor(float(self.total_macs), dtype=torch.float64)
        for blk in self.blocks:
            keep: torch.Tensor | float = 1.0
            for r in blk.removed_by:
                keep = keep * expect(r)
            shrunk = sum((m * expect(dim, full) for dim, m, full in blk.scaled), 0.0)
            full_scaled = sum(m for _, m, _ in blk.scaled)
            # kept: fixed + shrunk; removed: 0
            block_macs = keep * (blk.fixed + shrunk)
            total = total - (blk.fixed + full_scaled) + block_macs
        return total

    def uniform(self, fraction: float) -> Arch:
        """Every width/heads/FFN dimension at the choice nearest ``fraction`` of full; all layers
        kept and no residual branch dropped (width 0 is depth, not a uniform width)."""
        values: dict[str, Choice] = {}
        for d in self.free_dimensions():
            if isinstance(d.full, bool):
                values[d.name] = True
            else:
                positive = [c for c in d.choices if c > 0]
                values[d.name] = min(positive, key=lambda c: (abs(c / d.full - fraction), -c))
        return self.complete(values)
