"""What several built-in methods share: input hashes and the common fine-tuning budget."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from nas.config import ExperimentConfig

if TYPE_CHECKING:  # pragma: no cover
    from experts.training import ExpertTrainSettings

__all__ = ["file_hash", "finetune_settings", "inputs_key"]


def inputs_key(*parts: str) -> str:
    """16 hex digits of sha256 over ``parts`` joined by ``:`` (a candidate's ``inputs_key``).

    Example:
        >>> inputs_key("cfg", "static")
        'd8aab67d29093a8b'
    """
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]


def file_hash(path: Path) -> str:
    """16 hex digits of sha256 over the file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def finetune_settings(cfg: ExperimentConfig) -> ExpertTrainSettings:
    """The fine-tuning budget every pruned model gets per expert (``experts.finetune_*``)."""
    from nas.run import finetune_settings as settings

    return settings(cfg)
