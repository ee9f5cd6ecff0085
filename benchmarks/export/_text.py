"""The text encoder and tokenizer of an exported text-to-image mixture.

A run's mixture folders are saved without the base model's text encoder (their experts carry the
embeddings of the run's prompts, :mod:`experts.text_condition`), so on their own they take only
those prompts. An export hands over a whole text-to-image pipeline: :func:`find_text_parts`
finds the base model's ``text_encoder/`` and ``tokenizer/`` among the run's stored folders
(``base/`` and the folders in it, e.g. ``base/embedded-digits-text-<hash>/``, and ``model.base``
of the run's config when it is a local folder) and keeps the one whose encoder gives the very
embeddings the experts store for their prompts; :func:`add_text_parts` copies both into the
exported folder and names them in its ``model_index.json``, as ``save_pretrained`` of a
:class:`~experts.pipeline.MixturePipeline` with a text encoder writes them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["add_text_parts", "find_text_parts"]

_PARTS = ("text_encoder", "tokenizer")


def _index(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _has_parts(idx: dict[str, Any]) -> bool:
    """Whether ``model_index.json`` names both text parts (``save_pretrained`` writes ``[null, null]``
    for a pipeline without them)."""
    return all(isinstance(idx.get(k), list) and idx[k] and idx[k][0] is not None for k in _PARTS)


def _candidates(run: Path, config: dict[str, Any] | None) -> list[Path]:
    """Stored folders that may hold the base model's text parts, in the order they are tried."""
    out: list[Path] = []
    spec = str(((config or {}).get("model") or {}).get("base") or "")
    if spec and not spec.startswith("embedded:"):
        p = Path(spec).expanduser()
        out += [p] if p.is_absolute() else [p, run / p]
    base = run / "base"
    out.append(base)
    if base.is_dir():
        out += sorted(d for d in base.iterdir() if d.is_dir())
    seen: list[Path] = []
    for p in out:
        idx = _index(p) if p.is_dir() else None
        if idx is not None and _has_parts(idx) and all((p / k).is_dir() for k in _PARTS) and p not in seen:
            seen.append(p)
    return seen


def _prompt_table(folder: Path) -> tuple[list[str], Any] | None:
    """(prompts, embeddings (P, L, D)) stored in the mixture's first expert, or None."""
    from experts.pipeline import load_model_folder
    from experts.text_condition import prompt_table

    mixture = load_model_folder(folder).model
    experts = getattr(mixture, "experts", None)
    return prompt_table(experts[0]) if experts else None


def find_text_parts(run: Path, folder: Path, config: dict[str, Any] | None = None) -> Path | None:
    """The stored folder whose ``text_encoder``/``tokenizer`` encode the prompts of the mixture
    pipeline ``folder`` into the embeddings its experts store (within 1e-4); None when ``folder``
    has its own text encoder, its experts store no prompts, or no stored folder matches (logged).
    """
    import torch

    from experts.text_condition import encode_prompts
    from nas.text_models import load_text_parts

    if _has_parts(_index(folder) or {}):
        return None
    table = _prompt_table(folder)
    if table is None:
        return None
    prompts, embeds = table
    embeds = torch.as_tensor(embeds).float()
    tried = _candidates(run, config)
    for cand in tried:
        try:
            enc, tok = load_text_parts(cand, _index(cand) or {}, "cpu")
            got = encode_prompts(enc, tok, list(prompts)).float().cpu()  # (P, L, D)
        except Exception as exc:  # noqa: BLE001 - an unreadable candidate is just not the one
            log.debug("export: %s: text parts not usable (%s)", cand, exc)
            continue
        if got.shape == embeds.shape and torch.allclose(got, embeds, atol=1e-4):
            return cand
    log.warning("export: no stored text encoder gives the experts' prompt embeddings (tried %s); the pipeline "
                "takes the experts' own prompts only", ", ".join(str(c) for c in tried) or "none")
    return None


def add_text_parts(source: Path, dest: Path) -> None:
    """Copy ``source``'s ``text_encoder/`` and ``tokenizer/`` into the pipeline folder ``dest`` and
    name them in its ``model_index.json`` (their library and class as ``source`` names them)."""
    src_idx = _index(source) or {}
    idx_path = dest / "model_index.json"
    idx = json.loads(idx_path.read_text(encoding="utf-8"))
    for part in _PARTS:
        shutil.copytree(source / part, dest / part)
        idx[part] = list(src_idx[part])
    idx_path.write_text(json.dumps(idx, indent=2, sort_keys=True) + "\n")
