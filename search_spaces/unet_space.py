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

from collections.abc import Mapping

import torch
from torch import nn

from search_spaces._arch import Arch, Choice, Dimension
from search_spaces._search_space import SearchSpace
from search_spaces._unet_sites import PAIR_RULE, CostBlock, Site, SiteBuilder, SpaceOptions

__all__ = ["SpaceOptions", "UNetSpace", "Site", "CostBlock", "PAIR_RULE"]


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
        builder = SiteBuilder(unet, options)
        builder.build()
        count = unet_macs_by_module(unet, batch_size=1, encoder_seq_len=encoder_seq_len)
        by_module = count.by_module
        fulls = {d.name: d.full for d in builder.dims}
        blocks = []
        for paths, scaled, removers in builder.blocks:
            total = float(sum(by_module.get(p, 0) for p in paths))
            parts: dict[str, float] = {}
            for dim, p in scaled:
                parts[dim] = parts.get(dim, 0.0) + float(by_module.get(p, 0))
            blocks.append(
                CostBlock(
                    fixed=total - sum(parts.values()),
                    scaled=[(d, m, int(fulls[d])) for d, m in parts.items()],
                    removed_by=tuple(r for r in removers if r),
                )
            )
        return cls(tuple(builder.sites), tuple(builder.dims), tuple(blocks), count.total,
                   builder.group_size, options)

    @classmethod
    def structure(cls, unet: nn.Module, options: SpaceOptions) -> "UNetSpace":
        """The sites and dimensions of ``unet`` without a MACs count (what materialisation
        needs to rebuild pruned shapes; :meth:`macs` of this space is not meaningful)."""
        builder = SiteBuilder(unet, options)
        builder.build()
        return cls(tuple(builder.sites), tuple(builder.dims), (), 0, builder.group_size, options)

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
