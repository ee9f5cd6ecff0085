"""The folder format of a statically pruned UNet (one network for every timestep).

torch-pruning's per-layer channel counts (and attention head dims) are not expressible in a
diffusers config, so a plain ``UNet2DModel.from_pretrained`` cannot load a pruned UNet. This
format can: :func:`save_pruned` writes the diffusers ``config.json`` of the *unpruned*
architecture with a :data:`PRUNED_KEY` record of every tensor shape and bookkeeping attribute
that pruning changed, and the weights in ``diffusion_pytorch_model.safetensors``;
:func:`load_pruned` builds the unpruned skeleton (on the meta device), resizes the recorded
tensors, sets the recorded attributes and loads the weights strictly, in one call, with nothing
unpickled; :func:`is_pruned_folder` tells such a folder.

The format lives here, beside the other model folders (:mod:`experts.pipeline` loads any of them),
so that loading a pruned baseline needs nothing from the benchmarks that produce it.

Example:
    >>> is_pruned_folder("no-such-folder")
    False
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces.errors import UserError
from search_spaces.materialize import empty_model

__all__ = ["PRUNED_KEY", "is_pruned_folder", "load_pruned", "save_pruned"]

#: Key of the pruning record inside ``config.json``.
PRUNED_KEY = "diffnas_pruned"
_FORMAT = 1
# bookkeeping attributes of torch / diffusers modules that follow the pruned shapes
_ATTRS = ("in_channels", "out_channels", "in_features", "out_features", "num_channels", "num_groups",
          "normalized_shape", "heads", "inner_dim", "query_dim", "out_dim", "channels", "inner_kv_dim")
_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _shape_record(model: nn.Module, skeleton: nn.Module) -> dict[str, Any]:
    """What differs between the pruned ``model`` and the unpruned ``skeleton``: tensor shapes
    (parameters and buffers) and bookkeeping attributes."""
    ref_shapes = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    shapes = {}
    for k, v in model.state_dict().items():
        if k not in ref_shapes:
            raise ValueError(f"pruned model has a tensor {k!r} the architecture does not have")
        if list(v.shape) != ref_shapes[k]:
            shapes[k] = list(v.shape)
    ref_modules = dict(skeleton.named_modules())
    attrs: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        ref = ref_modules.get(name)
        if ref is None:
            raise ValueError(f"pruned model has a module {name!r} the architecture does not have")
        mine, theirs = vars(m), vars(ref)  # plain attributes only (not diffusers' config lookups)
        for a in _ATTRS:
            if a not in mine or a not in theirs:
                continue
            v, r = mine[a], theirs[a]
            if isinstance(v, bool) or not isinstance(v, (int, tuple)):
                continue
            if v != r:
                attrs.setdefault(name, {})[a] = list(v) if isinstance(v, tuple) else int(v)
    return {"format": _FORMAT, "shapes": shapes, "attributes": attrs}


def _unet_class(name: str) -> type:
    from diffusers import UNet2DConditionModel, UNet2DModel

    classes = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
    if name not in classes:
        raise UserError(f"unsupported model class {name!r}; expected one of {sorted(classes)}")
    return classes[name]


def save_pruned(model: nn.Module, path: str | Path, info: Mapping[str, Any] | None = None) -> Path:
    """Save a pruned UNet: ``config.json`` (unpruned architecture + ``diffnas_pruned`` record)
    and ``diffusion_pytorch_model.safetensors``. Load it with :func:`load_pruned`.

    The folder is written beside the target and renamed into place, so an interrupted save never
    leaves a half-written model under the final name.
    """
    import shutil

    from safetensors.torch import save_file

    path = Path(path)
    config = {k: v for k, v in dict(model.config).items() if k not in (PRUNED_KEY, "_name_or_path")}
    cls = _unet_class(str(config.get("_class_name", type(model).__name__)))
    record = _shape_record(model, empty_model(cls, config))
    record["info"] = dict(info or {})
    config = {**config, "_class_name": cls.__name__, PRUNED_KEY: record}
    tmp = path.with_name(path.name + ".saving")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / _WEIGHTS), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=_json_default))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to config.json")


def is_pruned_folder(path: str | Path) -> bool:
    """True if ``path`` holds a model written by :func:`save_pruned`."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return PRUNED_KEY in json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _set_tensor(model: nn.Module, name: str, shape: list[int]) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    old = getattr(owner, leaf)
    new = torch.empty(tuple(shape), dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(owner, leaf, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        owner.register_buffer(leaf, new, persistent=True)


def load_pruned(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load a folder written by :func:`save_pruned` (one call; safetensors only, strict).

    Example::

        >>> model = load_pruned("runs/demo/mixtures/static-0.5/model")  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path} is not a saved model folder (no config.json)")
    config = json.loads(cfg_file.read_text())
    record = config.pop(PRUNED_KEY, None)
    if record is None:
        raise UserError(f"{path} was not saved by save_pruned (no {PRUNED_KEY!r} in config.json)")
    if int(record.get("format", 0)) > _FORMAT:
        raise UserError(f"{path}: pruned-model format {record.get('format')} is newer than this version reads")
    weights = path / _WEIGHTS
    if not weights.is_file():
        raise UserError(f"{path}: missing {_WEIGHTS}")
    cls = _unet_class(str(config.get("_class_name", "UNet2DModel")))
    model = empty_model(cls, config)
    for name, shape in record.get("shapes", {}).items():
        _set_tensor(model, name, shape)
    for mod_name, attrs in record.get("attributes", {}).items():
        m = model.get_submodule(mod_name) if mod_name else model
        for a, v in attrs.items():
            setattr(m, a, tuple(v) if isinstance(v, list) else v)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the recorded shapes (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    model.register_to_config(**{PRUNED_KEY: record})
    return model.to(device).eval()
