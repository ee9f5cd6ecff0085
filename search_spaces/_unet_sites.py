"""The sites of the built-in UNet space: which modules of a diffusers UNet are elastic.

:class:`SiteBuilder` walks a UNet once and lists its elastic :class:`Site` s, their
:class:`~search_spaces.Dimension` s and the MACs :class:`CostBlock` templates that
:class:`~search_spaces.UNetSpace` turns into its cost model; :class:`SpaceOptions` says what is
made elastic. The dimensions are described in :mod:`search_spaces.unet_space`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from search_spaces._arch import Dimension

__all__ = ["PAIR_RULE", "CostBlock", "Site", "SiteBuilder", "SpaceOptions"]

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


class SiteBuilder:
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
        """List the sites, dimensions and cost blocks: down path, mid block, up path (that
        order is the order of the dimensions)."""
        self._check_block_types()
        pairs = self._pairs()
        layer_dims = self._layer_dims(pairs)
        self._walk_down(layer_dims)
        self._walk_mid()
        self._walk_up(pairs, layer_dims)

    def _check_block_types(self) -> None:
        for b, blk in enumerate(self.unet.down_blocks):
            if type(blk).__name__ not in self.SUPPORTED_DOWN:
                raise ValueError(
                    f"unsupported down block {type(blk).__name__} at down_blocks.{b}; supported: "
                    f"{sorted(self.SUPPORTED_DOWN)}"
                )
        for u, blk in enumerate(self.unet.up_blocks):
            if type(blk).__name__ not in self.SUPPORTED_UP:
                raise ValueError(
                    f"unsupported up block {type(blk).__name__} at up_blocks.{u}; supported: "
                    f"{sorted(self.SUPPORTED_UP)}"
                )

    def _layer_dims(self, pairs: dict[tuple[int, int], tuple[int, int]]) -> dict[tuple[str, int, int], str]:
        """Depth dimension names of the removable (down, up) layer pairs."""
        layer_dims: dict[tuple[str, int, int], str] = {}
        if self.opts.depth:
            for (b, j), (u, i) in pairs.items():
                layer_dims[("down", b, j)] = f"down.{b}.layers.{j}.depth"
                layer_dims[("up", u, i)] = f"up.{u}.layers.{i}.depth"
        return layer_dims

    def _walk_down(self, layer_dims: dict[tuple[str, int, int], str]) -> None:
        for b, blk in enumerate(self.unet.down_blocks):
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

    def _walk_mid(self) -> None:
        mid = self.unet.mid_block
        if mid is None:
            return
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

    def _walk_up(self, pairs: dict[tuple[int, int], tuple[int, int]],
                 layer_dims: dict[tuple[str, int, int], str]) -> None:
        for u, blk in enumerate(self.unet.up_blocks):
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
