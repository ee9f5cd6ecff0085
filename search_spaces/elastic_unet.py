"""The elastic UNet supernet: one pretrained diffusers UNet, every sub-network of its space.

:class:`ElasticUNet` *wraps* (never forks) a diffusers ``UNet2DModel`` or
``UNet2DConditionModel``. The full weights stay in place; a sub-network is selected by
channel masks (forward pre-hooks on the layers that consume the elastic channels) and by
layer skipping (the skipped module's ``forward`` is replaced by an identity on the instance),
so :meth:`ElasticUNet.set_active` switches sub-networks without allocating. With the full arch
no hook changes anything, so the output equals the pretrained model's bit for bit.

Why masks are exact: a ResNet's inner width is consumed only by ``conv2``; whole GroupNorm
groups are kept (widths are multiples of the group size) and the kept channels come first,
so masking ``conv2``'s input equals physically removing the channels. The same holds for
attention heads (mask the input of ``to_out``) and feed-forward width (mask the input of the
output projection). Channels are ordered by importance once, at construction, by permuting
whole groups/heads, which leaves the function unchanged. Width ``0`` (a dropped residual
branch) masks every channel and also takes ``conv2``'s bias back out (a forward hook), so the
block returns exactly ``shortcut(x) / output_scale_factor``, as the materialised
:class:`~search_spaces.materialize.ShortcutResnet` does.

Masks can also be *relaxed* (:meth:`ElasticUNet.set_active_relaxed`): a probability or
straight-through one-hot per choice gives a differentiable mask, which is how the routing
agent trains through the experts.

A masked pass costs the full model whatever the arch. ``set_active(arch, mode="sliced")``
(opt-in) runs the sub-network that :meth:`ElasticUNet.sliced` returns instead: only the active
channels and layers, computed with slices of the supernet's live weights, so a pass costs the
arch's MACs and equals the masked pass up to float summation order (see
:mod:`search_spaces._sliced` for why it never goes stale). Sub-networks are cached per arch.

Example:
    >>> import torch
    >>> from diffusers import UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
    ...     layers_per_block=1, norm_num_groups=4, add_attention=False,
    ...     down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    >>> net = ElasticUNet(unet)
    >>> x, t = torch.randn(1, 1, 8, 8), torch.tensor([5])
    >>> net.set_active(net.space.smallest())
    >>> small = net(x, t).sample
    >>> sub = net.materialize(net.space.smallest())
    >>> bool(torch.allclose(sub(x, t).sample, small, atol=1e-5))
    True
"""

from __future__ import annotations

import copy
import json
import logging
import types
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces._arch import Arch, Choice
from search_spaces._importance import ff_out, reorder_by_importance
from search_spaces._sliced import SlicedCache
from search_spaces.unet_space import SpaceOptions, UNetSpace

logger = logging.getLogger(__name__)

__all__ = ["ElasticUNet", "reorder_by_importance"]

SUPERNET_FILE = "diffnas_supernet.json"
MODES = ("masked", "sliced")


# ---------------------------------------------------------------------- skipping
def _skip_resnet(self: nn.Module, input_tensor: torch.Tensor, temb: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
    # down/mid: input has out_channels already; up: input is cat(hidden, skip) -> keep hidden
    return input_tensor[:, : self.out_channels]


def _skip_attention(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    if kwargs.get("return_dict", True) is False:
        return (hidden_states,)
    if hasattr(self, "transformer_blocks"):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=hidden_states)
    return hidden_states


def _relaxed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Blend of the module and its skip, weighted by the relaxed keep-probability."""
    p = self._diffnas_keep
    out = type(self).forward(self, *args, **kwargs)
    skip = self._diffnas_skip(self, *args, **kwargs)
    if isinstance(out, torch.Tensor):
        return p * out + (1 - p) * skip
    if isinstance(out, tuple):
        return (p * out[0] + (1 - p) * skip[0],) + tuple(out[1:])
    out.sample = p * out.sample + (1 - p) * skip.sample
    return out


class ElasticUNet(nn.Module):
    """A supernet over a diffusers UNet (see the module docstring).

    Args:
        unet: the pretrained ``UNet2DModel`` / ``UNet2DConditionModel``.
        options: what is elastic (:class:`SpaceOptions`).
        importance: channel ordering applied once (``magnitude`` or ``none``).
        copy_model: work on a deep copy (default) so the caller's model is left untouched.
        encoder_seq_len: text length assumed by the MACs count of conditional UNets.

    Attributes:
        sliced_cache_size: most sliced sub-networks kept (least recently used dropped first).
    """

    sliced_cache_size = 64

    def __init__(
        self,
        unet: nn.Module,
        options: SpaceOptions | None = None,
        *,
        importance: str = "magnitude",
        copy_model: bool = True,
        encoder_seq_len: int = 77,
    ) -> None:
        super().__init__()
        self.unet = copy.deepcopy(unet) if copy_model else unet
        self.space = UNetSpace.from_unet(self.unet, options, encoder_seq_len=encoder_seq_len)
        self.importance = importance
        self.encoder_seq_len = encoder_seq_len
        reorder_by_importance(self.unet, self.space, importance)
        self._attach()

    def _attach(self) -> None:
        """Fresh mask state and hooks on ``self.unet`` (which must carry none), at full arch."""
        self._masks: dict[str, torch.Tensor] = {}
        self._mask_full: dict[str, bool] = {}
        # width sites whose conv2 bias hook must act: width 0 (hard) or any relaxed weights;
        # a Python flag, so the hot path never reads a mask value back from the device
        self._bias_hook_on: dict[str, bool] = {}
        self._tables: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._controllers: dict[str, list[str]] = {}
        self._install()
        self.active: Arch = self.space.full()
        self._sliced_cache = SlicedCache(self.unet, self.space)
        self._sliced_active: nn.Module | None = None  # set in "sliced" mode: forward runs it

    def __deepcopy__(self, memo: dict) -> "ElasticUNet":
        """An independent supernet: its own weights, masks and hooks, at the same active arch.

        (A plain deep copy would duplicate the hooks' closures, which still point at the
        original's masks.) The space is immutable and shared; no MACs are recounted.
        """
        new = type(self).__new__(type(self))
        nn.Module.__init__(new)
        new.unet = self.plain_unet()
        new.space = self.space
        new.importance = self.importance
        new.encoder_seq_len = self.encoder_seq_len
        new.train(self.training)
        new._attach()
        if self.active is not None:
            new.set_active(self.active, mode=self.mode)
        return new

    # ------------------------------------------------------------------ install hooks
    def _install(self) -> None:
        for site in self.space.sites:
            if site.kind in ("width", "heads", "ffn"):
                m = self.unet.get_submodule(site.module)
                if site.kind == "width":
                    target, n_ch, unit = m.conv2, site.full, 1
                elif site.kind == "heads":
                    target, n_ch, unit = m.to_out[0], m.to_q.out_features, m.to_q.out_features // site.full
                else:
                    target, n_ch, unit = ff_out(m), site.full, 1
                dim = self.space.dimension(site.name)
                # (n_choices, n_ch): row c keeps the first choice*unit channels
                table = torch.zeros(len(dim.choices), n_ch)
                for i, c in enumerate(dim.choices):
                    table[i, : c * unit] = 1.0
                self._tables[site.name] = table
                mask = torch.ones(n_ch)
                self._masks[site.name] = mask
                self._mask_full[site.name] = True
                self._handles.append(target.register_forward_pre_hook(self._make_hook(site.name, site.kind)))
                if site.kind == "width" and dim.choices[0] == 0 and target.bias is not None:
                    self._handles.append(target.register_forward_hook(self._make_bias_hook(site.name)))
            else:
                for path in site.modules or (site.module,):
                    mod = self.unet.get_submodule(path)
                    mod._diffnas_skip = _skip_resnet if "resnets" in path.split(".")[-2:] else _skip_attention
                    mod._diffnas_keep = True
                    # a module is kept only if every dimension that can remove it keeps it
                    # (an attention is removed by its own depth and by its layer's)
                    self._controllers.setdefault(path, []).append(site.name)

    def _make_hook(self, name: str, kind: str):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if self._mask_full[name]:
                return None
            mask = self._masks[name].to(dtype=args[0].dtype, device=args[0].device)
            x = args[0]
            if kind == "width":  # x: (B, C, H, W)
                x = x * mask.view(1, -1, 1, 1)
            else:  # x: (B, L, inner)
                x = x * mask
            return (x,) + tuple(args[1:])

        return hook

    def _make_bias_hook(self, name: str):
        """Width 0 drops conv2's bias too: out - (1 - P(width > 0)) * bias."""

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if not self._bias_hook_on.get(name, False):
                return None
            # mask[0] (first channel kept) = 0 at width 0, P(width > 0) relaxed
            keep_branch = self._masks[name][0].to(dtype=out.dtype, device=out.device)
            return out - (1 - keep_branch) * module.bias.view(1, -1, 1, 1)  # out: (B, C, H, W)

        return hook

    def _set_depth(self, path: str, keep: bool | torch.Tensor) -> None:
        mod = self.unet.get_submodule(path)
        mod._diffnas_keep = keep
        if keep is True:
            mod.__dict__.pop("forward", None)
        elif keep is False:
            mod.forward = types.MethodType(mod._diffnas_skip, mod)
        else:
            mod.forward = types.MethodType(_relaxed_forward, mod)

    # ------------------------------------------------------------------ public API
    def set_active(self, arch: Mapping[str, Choice], *, mode: str = "masked") -> None:
        """Select the sub-network ``arch`` (validated).

        ``mode="masked"`` (default) switches masks and layer skips in place (no allocation):
        a pass costs the full model. ``mode="sliced"`` also does that (so ``self.unet`` is at
        ``arch`` either way) and makes :meth:`forward` run the cached :meth:`sliced`
        sub-network, whose pass costs ``arch``'s MACs. For evaluation and weight training;
        arch gradients need :meth:`set_active_relaxed`.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        arch = Arch(arch)
        self.space.validate(arch)
        self._sliced_active = self.sliced(arch) if mode == "sliced" else None
        for site in self.space.sites:
            v = arch[site.name]
            if site.kind in ("width", "heads", "ffn"):
                dim = self.space.dimension(site.name)
                full = v == dim.full
                self._mask_full[site.name] = full
                self._bias_hook_on[site.name] = v == 0
                if not full:
                    if self._masks[site.name].requires_grad:  # left over from a relaxed pass
                        self._masks[site.name] = torch.ones(self._tables[site.name].shape[1])
                    self._masks[site.name].copy_(self._tables[site.name][dim.index(v)])
        for path, names in self._controllers.items():
            self._set_depth(path, all(bool(arch[n]) for n in names))
        self.active = arch

    @property
    def mode(self) -> str:
        """How the active sub-network runs: ``masked``, ``sliced`` or ``relaxed``."""
        if self._sliced_active is not None:
            return "sliced"
        return "masked" if self.active is not None else "relaxed"

    def sliced(self, arch: Mapping[str, Choice]) -> nn.Module:
        """The sub-network ``arch`` as a module that runs only its channels and layers.

        Called like the wrapped UNet; shares this supernet's parameters (slices taken at each
        call, so weight updates, ``load_state_dict`` and ``.to()`` are seen without a
        rebuild). Cached per arch (at most :attr:`sliced_cache_size`); call
        :meth:`clear_sliced_cache` after replacing modules or attention processors of
        ``self.unet``.
        """
        sub = self._sliced_cache.get(Arch(arch), self.sliced_cache_size)
        if sub.training != self.training:
            sub.train(self.training)
        return sub

    def clear_sliced_cache(self) -> None:
        """Drop every cached sliced sub-network (the active one too: back to masked mode)."""
        self._sliced_cache.clear()
        self._sliced_active = None

    def set_active_relaxed(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Relaxed sub-network: ``weights[name]`` is a (n_choices,) probability/one-hot tensor.

        Missing free dimensions are full; tied dimensions follow their partner. Gradients flow
        from the output into the weights.
        """
        dims = {d.name: d for d in self.space.dimensions()}
        for name in weights:
            if name not in dims or dims[name].tied_to is not None:
                raise ValueError(f"unknown or tied dimension {name!r} in relaxed weights")
        for site in self.space.sites:
            d = dims[site.name]
            w = weights.get(d.tied_to or site.name)
            if site.kind in ("width", "heads", "ffn"):
                self._bias_hook_on[site.name] = w is not None
                if w is None:
                    self._mask_full[site.name] = True
                    continue
                table = self._tables[site.name].to(w.device, w.dtype)
                self._masks[site.name] = w @ table  # (n_ch,), differentiable
                self._mask_full[site.name] = False
        for path, names in self._controllers.items():
            keep: bool | torch.Tensor = True
            for n in names:
                d = dims[n]
                w = weights.get(d.tied_to or n)
                if w is not None:
                    keep = w[1] if keep is True else keep * w[1]
            self._set_depth(path, keep)
        self._sliced_active = None
        self.active = None  # type: ignore[assignment]

    def reset(self) -> None:
        """Back to the full network (and fresh, non-differentiable mask buffers)."""
        for name, mask in self._masks.items():
            self._masks[name] = torch.ones_like(mask, requires_grad=False).detach()
        self.set_active(self.space.full())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped UNet at the active sub-network (same signature as the UNet)."""
        sub = self._sliced_active
        if sub is not None:
            if sub.training != self.training:
                sub.train(self.training)
            return sub(*args, **kwargs)
        return self.unet(*args, **kwargs)

    @property
    def config(self) -> Any:
        """The wrapped UNet's diffusers config."""
        return self.unet.config

    def macs(self, arch: Mapping[str, Choice] | None = None) -> int:
        """MACs of one call at ``arch`` (default: the active arch)."""
        return self.space.macs(arch if arch is not None else self.active)

    def plain_unet(self) -> nn.Module:
        """A deep copy of the (importance-ordered) full UNet with no hooks attached."""
        return _strip(copy.deepcopy(self.unet))

    def save_pretrained(self, path: str | Path) -> None:
        """Save the supernet: the full (importance-ordered) UNet via diffusers' safetensors
        ``save_pretrained`` plus ``diffnas_supernet.json`` (the space options)."""
        path = Path(path)
        from search_spaces.materialize import drop_source_paths

        self.plain_unet().save_pretrained(str(path), safe_serialization=True)
        drop_source_paths(path)
        meta = {"options": asdict(self.space.options), "importance": self.importance,
                "encoder_seq_len": self.encoder_seq_len}
        (path / SUPERNET_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None) -> "ElasticUNet":
        """Load a folder written by :meth:`save_pretrained` (channels already ordered), in the
        dtype its weights were saved in, or ``torch_dtype`` when given."""
        from diffusers import UNet2DConditionModel, UNet2DModel

        from search_spaces.errors import UserError
        from search_spaces.materialize import WEIGHTS_FILE, stored_dtype

        path = Path(path)
        meta_file = path / SUPERNET_FILE
        if not meta_file.is_file():
            raise UserError(f"{path} is not a saved supernet (no {SUPERNET_FILE}); save with ElasticUNet.save_pretrained")
        meta = json.loads(meta_file.read_text())
        cfg = json.loads((path / "config.json").read_text())
        klass = UNet2DConditionModel if cfg.get("_class_name") == "UNet2DConditionModel" else UNet2DModel
        weights = path / WEIGHTS_FILE
        dtype = torch_dtype or (stored_dtype(weights) if weights.is_file() else None)
        # fp32 is diffusers' default: pass a dtype only when one is asked for or stored
        kw = {"torch_dtype": dtype} if torch_dtype is not None or dtype not in (None, torch.float32) else {}
        unet = klass.from_pretrained(str(path), use_safetensors=True, **kw).to(device)
        opts = SpaceOptions.from_dict(meta["options"])
        return cls(unet, opts, importance="none", copy_model=False, encoder_seq_len=meta["encoder_seq_len"])

    def materialize(self, arch: Mapping[str, Choice]) -> nn.Module:
        """A plain diffusers model with the channels and layers of ``arch`` physically removed."""
        from search_spaces.materialize import apply_arch

        arch = Arch(arch)
        self.space.validate(arch)
        model = self.plain_unet()
        apply_arch(model, self.space, arch)
        return model


def _strip(model: nn.Module) -> nn.Module:
    """Remove the supernet's hooks, forward overrides and markers from a copied model (the
    copied hooks would still read the *original* supernet's masks)."""
    for m in model.modules():
        m.__dict__.pop("forward", None)
        m.__dict__.pop("_diffnas_keep", None)
        m.__dict__.pop("_diffnas_skip", None)
        m._forward_pre_hooks.clear()
        m._forward_hooks.clear()  # the width-0 bias hooks read the supernet's live masks
    return model
