"""Materialisation: turn one arch of a :class:`UNetSpace` into a plain, smaller diffusers UNet.

Width is removed with torch-pruning's layer pruners (``conv1`` out / ``time_emb_proj`` out /
``norm2`` / ``conv2`` in of a ResNet; ``to_q``/``to_k``/``to_v`` out and ``to_out`` in of an
attention; the FFN's projections), keeping the first channels (the supernet orders them by
importance). Depth is removed by deleting the layer from its block's ``ModuleList`` (a coupled
down/up pair, so the skip stack stays aligned: diffusers pops ``len(block.resnets)`` skips per
up block) or, where diffusers pairs modules by position (mid blocks, attention-only skips), by
a parameter-free :class:`SkippedLayer`. A ResNet at width 0 (residual branch dropped) becomes a
:class:`ShortcutResnet` holding only the original shortcut convolution, if any.

Saved format (one folder, one call to load): diffusers' own ``save_pretrained`` (config.json +
``diffusion_pytorch_model.safetensors``) where ``config.json`` carries the extra key
``diffnas_arch`` (the arch) and ``diffnas_space`` (the space options). Diffusers' config cannot
express per-layer widths, so plain ``UNet2DModel.from_pretrained`` refuses the folder (shape
mismatch); :func:`load_materialized` rebuilds the pruned shapes from the arch and loads the
safetensors weights strictly.

Example:
    >>> import tempfile, torch
    >>> from diffusers import UNet2DModel
    >>> from search_spaces import ElasticUNet
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
    ...     layers_per_block=1, norm_num_groups=4, add_attention=False,
    ...     down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    >>> net = ElasticUNet(unet)
    >>> small = net.materialize(net.space.smallest())
    >>> d = tempfile.mkdtemp()
    >>> save_materialized(small, d)
    >>> again = load_materialized(d)
    >>> x, t = torch.randn(1, 1, 8, 8), torch.tensor([3])
    >>> bool(torch.equal(small(x, t).sample, again(x, t).sample))
    True
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from search_spaces.base import Arch
from search_spaces.errors import UserError
from search_spaces.unet_space import SpaceOptions, UNetSpace

logger = logging.getLogger(__name__)

__all__ = ["SkippedLayer", "ShortcutResnet", "apply_arch", "arch_of", "empty_model", "load_materialized", "remove_layers",
           "save_materialized", "stored_dtype"]

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
ARCH_KEY = "diffnas_arch"
OPTIONS_KEY = "diffnas_space"


class SkippedLayer(nn.Module):
    """A removed ResNet or attention that diffusers still calls by position (no parameters).

    ResNet slot: returns the first ``out_channels`` of its input (identity on the hidden
    part); attention slot: returns its input, as a tuple when called with ``return_dict=False``.
    """

    def __init__(self, kind: str, out_channels: int = 0) -> None:
        super().__init__()
        if kind not in ("resnet", "attention"):
            raise ValueError(f"SkippedLayer kind must be 'resnet' or 'attention', got {kind!r}")
        self.kind = kind
        self.out_channels = int(out_channels)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "resnet":
            return hidden_states[:, : self.out_channels]
        if kwargs.get("return_dict", True) is False:
            return (hidden_states,)
        return hidden_states

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, out_channels={self.out_channels}"


class ShortcutResnet(nn.Module):
    """A ResNet block whose residual branch was dropped (width 0): ``shortcut(x) / scale``.

    Keeps the block's ``conv_shortcut`` (same parameter names, so the state dict of a
    materialised model stays aligned with the original's) and accepts the ResNet call
    signature ``(hidden_states, temb, ...)``; ``temb`` is unused.
    """

    def __init__(self, conv_shortcut: nn.Module | None, output_scale_factor: float, out_channels: int) -> None:
        super().__init__()
        self.conv_shortcut = conv_shortcut
        self.output_scale_factor = float(output_scale_factor)
        self.out_channels = int(out_channels)

    @classmethod
    def from_resnet(cls, resnet: nn.Module) -> "ShortcutResnet":
        """The shortcut of a diffusers ``ResnetBlock2D`` (up/down-sampling ResNets unsupported)."""
        if getattr(resnet, "up", False) or getattr(resnet, "down", False):
            raise ValueError("a resampling ResnetBlock2D cannot drop its residual branch")
        shortcut = resnet.conv_shortcut if getattr(resnet, "use_in_shortcut", False) else None
        return cls(shortcut, resnet.output_scale_factor, resnet.out_channels)

    def forward(self, input_tensor: torch.Tensor, temb: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
        return x / self.output_scale_factor if self.output_scale_factor != 1.0 else x

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, output_scale_factor={self.output_scale_factor}"


def _drop_last(n: int, keep: int) -> list[int]:
    return list(range(keep, n))


def _prune_resnet_width(resnet: nn.Module, width: int) -> None:
    full = resnet.conv2.in_channels
    if width == full:
        return
    gs = full // resnet.norm2.num_groups
    idxs = _drop_last(full, width)
    tp.prune_conv_out_channels(resnet.conv1, idxs)
    if resnet.time_emb_proj is not None:
        if resnet.time_emb_proj.out_features == 2 * full:  # scale_shift: (scale, shift) halves
            tp.prune_linear_out_channels(resnet.time_emb_proj, idxs + [i + full for i in idxs])
        else:
            tp.prune_linear_out_channels(resnet.time_emb_proj, idxs)
    tp.prune_groupnorm_out_channels(resnet.norm2, idxs)
    resnet.norm2.num_groups = width // gs  # torch-pruning leaves num_groups stale
    tp.prune_conv_in_channels(resnet.conv2, idxs)


def _prune_heads(attn: nn.Module, heads: int) -> None:
    full = attn.heads
    if heads == full:
        return
    head_dim = attn.to_q.out_features // full
    idxs = _drop_last(full * head_dim, heads * head_dim)
    for lin in (attn.to_q, attn.to_k, attn.to_v):
        tp.prune_linear_out_channels(lin, idxs)
    tp.prune_linear_in_channels(attn.to_out[0], idxs)
    attn.heads = heads
    attn.inner_dim = heads * head_dim
    if hasattr(attn, "inner_kv_dim"):
        attn.inner_kv_dim = heads * head_dim


def _prune_ffn(ff: nn.Module, inner: int) -> None:
    fin = ff.net[0].proj
    fout = [m for m in ff.net if isinstance(m, nn.Linear)][-1]
    full = fout.in_features
    if inner == full:
        return
    idxs = _drop_last(full, inner)
    if fin.out_features == 2 * full:  # GEGLU/SwiGLU: value and gate halves
        tp.prune_linear_out_channels(fin, idxs + [i + full for i in idxs])
    else:
        tp.prune_linear_out_channels(fin, idxs)
    tp.prune_linear_in_channels(fout, idxs)


@torch.no_grad()
def apply_arch(model: nn.Module, space: UNetSpace, arch: Mapping[str, Any]) -> nn.Module:
    """Physically apply ``arch`` to ``model`` (a plain copy of the space's UNet), in place."""
    arch = Arch(arch)
    space.validate(arch)
    # widths first: module paths still match the space's sites
    for site in space.sites:
        v = arch[site.name]
        if site.kind == "width" and int(v) == 0:
            _replace(model, site.module, ShortcutResnet.from_resnet(model.get_submodule(site.module)))
        elif site.kind == "width":
            _prune_resnet_width(model.get_submodule(site.module), int(v))
        elif site.kind == "heads":
            _prune_heads(model.get_submodule(site.module), int(v))
        elif site.kind == "ffn":
            _prune_ffn(model.get_submodule(site.module), int(v))
    remove_layers(model, space, arch)
    _sync_config(model, space, arch)
    return model


def remove_layers(model: nn.Module, space: UNetSpace, arch: Arch) -> None:
    """Apply the depth choices of ``arch`` to ``model`` (a copy of the space's UNet), in place.

    Slots first (a :class:`SkippedLayer` keeps the positions diffusers pairs by), deletions
    of coupled down/up layers last, highest index first, so earlier paths stay valid.
    """
    deletions: list[tuple[str, int]] = []
    for site in space.sites:
        if arch[site.name]:
            continue
        if site.kind == "layer":
            deletions.append((site.container, site.index))
        elif site.kind == "resnet_depth":
            _replace(model, site.module, SkippedLayer("resnet", model.get_submodule(site.module).out_channels))
        elif site.kind == "attn_depth":
            if _layer_removed(space, arch, site.module):
                continue
            _replace(model, site.module, SkippedLayer("attention"))
    for container, index in sorted(deletions, key=lambda d: (d[0], -d[1])):
        block = model.get_submodule(container)
        del block.resnets[index]
        if getattr(block, "attentions", None) is not None:
            del block.attentions[index]


def _layer_removed(space: UNetSpace, arch: Arch, module_path: str) -> bool:
    for s in space.sites:
        if s.kind == "layer" and module_path in s.modules and not arch[s.name]:
            return True
    return False


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    parent[int(name)] = new  # a ModuleList slot


def _sync_config(model: nn.Module, space: UNetSpace, arch: Arch) -> None:
    """Record the arch in the diffusers config (saved by ``save_pretrained``)."""
    model.register_to_config(**{ARCH_KEY: arch.to_dict(), OPTIONS_KEY: asdict(space.options)})


def arch_of(model: nn.Module) -> Arch | None:
    """The arch a materialised model was made with (None for an unpruned diffusers model)."""
    a = getattr(model.config, ARCH_KEY, None) if hasattr(model, "config") else None
    return Arch(a) if a is not None else None


def save_materialized(model: nn.Module, path: str | Path) -> None:
    """Save a materialised UNet: diffusers ``save_pretrained`` with safetensors weights."""
    if arch_of(model) is None:
        raise ValueError("model has no diffnas arch in its config: use model.save_pretrained for plain models")
    model.save_pretrained(str(path), safe_serialization=True)
    drop_source_paths(path)


SOURCE_PATH_KEY = "_name_or_path"


def drop_source_paths(folder: str | Path) -> int:
    """Remove ``_name_or_path`` from the ``config.json`` of a saved model folder and of its
    component sub-folders (a pipeline's ``unet/``, ``text_encoder/``...); returns how many files
    changed.

    diffusers and transformers record there the folder a model was loaded from, an absolute path
    when the run root is one: a run folder stores no absolute paths (it is copied and moved), and
    the loaders do not need the key.

    Example:
        >>> import json, tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "config.json").write_text(json.dumps({"_name_or_path": "/abs/src", "in_channels": 1}))
        >>> drop_source_paths(d), json.loads((d / "config.json").read_text())
        (1, {'in_channels': 1})
    """
    folder = Path(folder)
    changed = 0
    for cfg in [folder / "config.json", *sorted(folder.glob("*/config.json"))]:
        if not cfg.is_file():
            continue
        data = json.loads(cfg.read_text())
        if not isinstance(data, dict) or SOURCE_PATH_KEY not in data:
            continue
        del data[SOURCE_PATH_KEY]
        cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        changed += 1
    return changed


def load_materialized(path: str | Path, *, device: str | torch.device = "cpu",
                      torch_dtype: torch.dtype | None = None) -> nn.Module:
    """Load a folder written by :func:`save_materialized` (or a plain diffusers UNet folder).

    The pruned shapes are rebuilt from the arch stored in ``config.json``; the weights come
    from the safetensors file only (nothing is unpickled). The model gets the dtype its
    weights were saved in (a bf16 or fp16 model loads as one), or ``torch_dtype`` when given,
    as in diffusers' ``from_pretrained``.
    """
    from diffusers import UNet2DConditionModel, UNet2DModel

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path} is not a saved model folder (no config.json); save with save_materialized()")
    config = json.loads(cfg_file.read_text())
    cls_name = config.get("_class_name", "UNet2DModel")
    classes = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
    if cls_name not in classes:
        raise UserError(f"{path}: unsupported model class {cls_name!r}; expected one of {sorted(classes)}")
    cls = classes[cls_name]
    arch_dict = config.pop(ARCH_KEY, None)
    options = config.pop(OPTIONS_KEY, None)
    weights = path / WEIGHTS_FILE
    dtype = torch_dtype or (stored_dtype(weights) if weights.is_file() else None)
    if arch_dict is None:
        # fp32 is diffusers' default: pass a dtype only when one is asked for or stored
        kw = {"torch_dtype": dtype} if torch_dtype is not None or dtype not in (None, torch.float32) else {}
        return cls.from_pretrained(str(path), use_safetensors=True, **kw).to(device)
    if not weights.is_file():
        raise UserError(f"{path}: missing {WEIGHTS_FILE}")
    return _load_pruned(cls, config, SpaceOptions.from_dict(options), Arch(arch_dict), weights, dtype,
                        path).to(device).eval()


def _load_pruned(cls: type, config: dict, opts: SpaceOptions, arch: Arch, weights: Path,
                 dtype: torch.dtype | None, path: Path) -> nn.Module:
    """The pruned model of ``arch`` with the weights of ``weights`` (strict), in ``dtype``."""
    from safetensors.torch import load_file

    model = empty_model(cls, config)
    apply_arch(model, UNetSpace.structure(model, opts), arch)
    if dtype is not None and dtype != next(model.parameters()).dtype:
        nn.Module.to(model, dtype)  # diffusers' own .to() warns about casting; the weights come next
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the stored arch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def stored_dtype(weights: str | Path) -> torch.dtype | None:
    """The floating-point dtype of a safetensors file's tensors, or None when they mix dtypes
    (or have none). Reads the header only."""
    from safetensors import safe_open

    names = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
    found = set()
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            kind = f.get_slice(key).get_dtype()
            if kind in names:
                found.add(names[kind])
    return found.pop() if len(found) == 1 else None


def empty_model(cls: type, config: Mapping[str, Any]) -> nn.Module:
    """The unpruned model with uninitialised storage (built on the meta device: no init cost)."""
    try:
        with torch.device("meta"):
            model = cls.from_config(dict(config))
        return model.to_empty(device="cpu")
    except (RuntimeError, NotImplementedError):  # pragma: no cover - a model that can't go to meta
        return cls.from_config(dict(config))
