"""Turning ``class_labels`` into prompt embeddings inside ``UNet2DConditionModel`` (see
:mod:`experts.text_condition`). Kept free of torch and diffusers imports: ``import experts``
installs it, and it patches diffusers' UNet module only when that module is imported.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
from typing import Any

__all__ = ["EMBEDS_KEY", "PROMPTS_KEY", "enable_prompt_labels", "prompt_table"]

#: hidden keys of the UNet's diffusers config holding the prompt table (saved in config.json)
PROMPTS_KEY = "_diffnas_prompts"
EMBEDS_KEY = "_diffnas_prompt_embeds"

_UNET_MODULE = "diffusers.models.unets.unet_2d_condition"
_TABLES: dict[int, tuple[Any, Any]] = {}


def prompt_table(model: Any) -> tuple[list[str], Any] | None:
    """(prompts, embeddings (P, L, D) float32 on the CPU) stored in ``model``'s config, or None."""
    config = getattr(model, "config", None)
    raw = config.get(EMBEDS_KEY) if hasattr(config, "get") else None
    if raw is None:
        return None
    hit = _TABLES.get(id(raw))
    if hit is None or hit[0] is not raw:  # one tensor per stored list (a copy has its own)
        import torch

        if len(_TABLES) > 256:
            _TABLES.clear()
        hit = (raw, torch.tensor(raw, dtype=torch.float32))
        _TABLES[id(raw)] = hit
    return list(config.get(PROMPTS_KEY)), hit[1]


def _with_prompt_labels(forward: Any) -> Any:
    @functools.wraps(forward)
    def call(self: Any, sample: Any, timestep: Any, encoder_hidden_states: Any = None,
             class_labels: Any = None, *args: Any, **kwargs: Any) -> Any:
        if class_labels is not None and getattr(self, "class_embedding", None) is None:
            table = prompt_table(self)
            if table is not None:
                import torch

                emb = table[1].to(device=sample.device, dtype=sample.dtype)  # (P,L,D)
                encoder_hidden_states = emb[torch.as_tensor(class_labels, device=sample.device).long()]  # (B,L,D)
                class_labels = None
        return forward(self, sample, timestep, encoder_hidden_states, class_labels, *args, **kwargs)

    call._diffnas_prompt_labels = True  # type: ignore[attr-defined]
    return call


def _patch(module: Any) -> None:
    cls = module.UNet2DConditionModel
    if not getattr(cls.forward, "_diffnas_prompt_labels", False):
        cls.forward = _with_prompt_labels(cls.forward)


class _PatchOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Adds the conversion to diffusers' UNet module when (and if) it is imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _UNET_MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _patch(module)


def enable_prompt_labels() -> None:
    """Make ``UNet2DConditionModel`` use a stored prompt table for ``class_labels`` (idempotent;
    patches now if diffusers' UNet module is loaded, else when it is imported)."""
    module = sys.modules.get(_UNET_MODULE)
    if module is not None and hasattr(module, "UNet2DConditionModel"):
        _patch(module)
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
