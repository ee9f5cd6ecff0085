"""Training checkpoints: a folder with the weights and the AdamW state as safetensors and the
step, the RNG states, the loss log and the settings' identity as ``state.json`` (no pickles).

:func:`save_checkpoint` replaces the folder atomically (``.tmp`` then rename; a kill during the
swap keeps the last complete one, which :func:`recover_checkpoint` restores);
:func:`load_checkpoint` restores the model, optimiser and both RNGs exactly.
:func:`flatten_optimizer` / :func:`unflatten_optimizer` are the optimiser-state format, also
used by other trainers that checkpoint.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> opt = torch.optim.AdamW([p], lr=0.1)
    >>> p.grad = torch.ones(2); opt.step()
    >>> tensors, meta = flatten_optimizer(opt)
    >>> sorted(tensors)
    ['state.0.exp_avg', 'state.0.exp_avg_sq', 'state.0.step']
    >>> unflatten_optimizer(tensors, meta)["param_groups"] == opt.state_dict()["param_groups"]
    True
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from experts.expert_folder import reading_artefact

__all__ = [
    "finish_uninterrupted",
    "flatten_optimizer",
    "is_supernet",
    "jsonable",
    "load_checkpoint",
    "read_checkpoint_state",
    "recover_checkpoint",
    "remove_tree",
    "save_checkpoint",
    "unflatten_optimizer",
    "weights_module",
]


def is_supernet(m: nn.Module) -> bool:
    """True for an elastic supernet (``set_active`` and ``space``), False for a plain model."""
    return hasattr(m, "set_active") and hasattr(m, "space")


def weights_module(m: nn.Module) -> nn.Module:
    """The module whose state dict is saved: a supernet's wrapped UNet, else the model itself."""
    return m.unet if is_supernet(m) else m


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors (safetensors) plus a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{key}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten_optimizer`: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def remove_tree(path: Path) -> None:
    """Remove a folder if it exists."""
    if path.exists():
        shutil.rmtree(path)


def recover_checkpoint(ckpt: Path) -> None:
    """After a kill during the checkpoint swap, keep whichever complete checkpoint is left."""
    old = ckpt.with_name(ckpt.name + ".old")
    if not ckpt.exists() and old.exists():
        old.rename(ckpt)
    remove_tree(ckpt.with_name(ckpt.name + ".tmp"))
    remove_tree(old)


def save_checkpoint(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                     rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Write the checkpoint folder ``ckpt`` (weights, optimiser, RNGs, ``state``), atomically.

    Interrupted (Ctrl-C, SIGTERM turned into ``KeyboardInterrupt`` by the CLI, a full disk),
    it removes its ``.tmp`` folder and puts the previous checkpoint back, then re-raises.
    """
    from safetensors.torch import save_file

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    old = ckpt.with_name(ckpt.name + ".old")
    remove_tree(tmp)
    try:
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in weights_module(model).state_dict().items()},
                  str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = flatten_optimizer(opt)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        full = dict(state)
        full["optimizer"] = opt_meta
        full["torch_rng"] = base64.b64encode(gen.get_state().numpy().tobytes()).decode("ascii")
        full["numpy_rng"] = rng.bit_generator.state
        (tmp / "state.json").write_text(json.dumps(full, indent=1))
        remove_tree(old)
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
    except BaseException:
        finish_uninterrupted(lambda: recover_checkpoint(ckpt))
        raise
    finish_uninterrupted(lambda: remove_tree(old))


def finish_uninterrupted(clean_up: Callable[[], None]) -> None:
    """Run an idempotent ``clean_up``; if an interrupt (Ctrl-C, SIGTERM raised by the CLI) lands
    inside it, run it once more to the end, then re-raise, so no half-removed folder is left."""
    try:
        clean_up()
    except BaseException:
        clean_up()
        raise


_RESTART = "delete {ckpt} to restart that training from step 0 (the rest of the run is kept)"


def read_checkpoint_state(ckpt: Path) -> dict[str, Any]:
    """The ``state.json`` of checkpoint ``ckpt``; a one-line :class:`UserError` naming it if damaged."""
    path = Path(ckpt) / "state.json"
    with reading_artefact(path, _RESTART.format(ckpt=ckpt)):
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise ValueError(f"expected a JSON object, got {type(state).__name__}")
        return state


def load_checkpoint(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                     rng: np.random.Generator) -> dict[str, Any]:
    """Load ``ckpt`` into the model, optimiser and RNGs; returns its ``state.json``.

    Raises:
        UserError: a file of the checkpoint is truncated or damaged (named, with the remedy).
    """
    from safetensors.torch import load_file

    state = read_checkpoint_state(ckpt)
    remedy = _RESTART.format(ckpt=ckpt)
    with reading_artefact(ckpt / "model.safetensors", remedy):
        weights = load_file(str(ckpt / "model.safetensors"))
        weights_module(model).load_state_dict(weights, strict=True)
    with reading_artefact(ckpt / "optimizer.safetensors", remedy):
        opt.load_state_dict(unflatten_optimizer(load_file(str(ckpt / "optimizer.safetensors")), state["optimizer"]))
    with reading_artefact(ckpt / "state.json", remedy):
        gen.set_state(torch.frombuffer(bytearray(base64.b64decode(state["torch_rng"])), dtype=torch.uint8))
        rng.bit_generator.state = state["numpy_rng"]
    return state


def jsonable(d: Mapping[str, Any]) -> Any:
    """``d`` as it reads back from JSON (non-JSON values as strings): how identities are compared."""
    return json.loads(json.dumps(d, sort_keys=True, default=str))
