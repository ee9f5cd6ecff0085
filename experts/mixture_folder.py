"""The folder a :class:`~experts.mixture.MixtureOfExperts` is saved to, and how it is read back.

Saved layout (one folder, :meth:`MixtureOfExperts.save_pretrained`)::

    mixture.json        format, intervals, expert folders and kinds, one arch per interval,
                        expert shared by each interval, allocation (or null), info
    intervals.json      the intervals (same as in mixture.json; for people and other tools)
    allocation.json     the allocation it was built from, when there is one
    schedule.json       the step schedule it samples along by default, when there is one
                        (also in mixture.json under "schedule"; absent without one)
    config.json         diffusers config of the mixture module (shape info)
    expert_<j>/         one folder per distinct expert: ElasticUNet.save_pretrained (supernet),
                        search_spaces.save_materialized (materialised) or the UNet's own
                        save_pretrained (unpruned); safetensors weights only

Every distinct expert is stored once; ``expert_of_interval`` says which one serves each interval.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experts.allocation import Allocation
from experts.intervals import Intervals
from experts.schedule import StepSchedule
from search_spaces.base import Arch
from search_spaces.errors import UserError

__all__ = [
    "FORMAT",
    "MIXTURE_FILE",
    "VERSION",
    "MixtureFolder",
    "MixtureMeta",
    "is_mixture_folder",
    "is_supernet_expert",
    "read_mixture_folder",
    "save_experts",
    "swap_in",
]

MIXTURE_FILE = "mixture.json"
FORMAT = "diffnas-mixture"
VERSION = 1


def is_supernet_expert(m: nn.Module) -> bool:
    """True for an elastic supernet expert (``set_active``, ``space``, ``save_pretrained``)."""
    return hasattr(m, "set_active") and hasattr(m, "space") and hasattr(m, "save_pretrained")


def is_mixture_folder(path: str | Path) -> bool:
    """True if ``path`` holds a mixture written by :meth:`MixtureOfExperts.save_pretrained`."""
    return (Path(path) / MIXTURE_FILE).is_file()


@dataclass(frozen=True)
class MixtureMeta:
    """What ``mixture.json`` records (besides the expert folders themselves)."""

    intervals: Intervals
    experts: list[dict[str, str]]
    expert_of_interval: Sequence[int]
    archs: list[dict | None]
    allocation: Allocation | None
    macs_per_expert: list[int]
    info: Mapping[str, Any]
    schedule: StepSchedule | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; the key ``schedule`` only when there is one."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "intervals": self.intervals.to_dict(),
            "experts": self.experts,
            "expert_of_interval": list(self.expert_of_interval),
            "archs": self.archs,
            "allocation": self.allocation.to_dict() if self.allocation is not None else None,
            "macs_per_expert": self.macs_per_expert,
            "info": self.info,
        }
        if self.schedule is not None:
            out["schedule"] = self.schedule.to_dict()
        return out


def save_experts(experts: Sequence[nn.Module], folder: Path) -> list[dict[str, str]]:
    """Each distinct expert into ``folder/expert_<j>`` (supernet, materialised or plain UNet);
    returns the ``experts`` entries of ``mixture.json``."""
    from search_spaces.materialize import arch_of, drop_source_paths, save_materialized

    entries = []
    for j, e in enumerate(experts):
        name = f"expert_{j}"
        if is_supernet_expert(e):
            e.save_pretrained(folder / name)
            kind = "supernet"
        elif arch_of(e) is not None:
            save_materialized(e, folder / name)
            kind = "materialized"
        elif hasattr(e, "save_pretrained"):
            e.save_pretrained(str(folder / name), safe_serialization=True)
            drop_source_paths(folder / name)
            kind = "unet"
        else:
            raise TypeError(f"expert {j} ({type(e).__name__}) cannot be saved: not a diffusers model or supernet")
        entries.append({"folder": name, "kind": kind})
    return entries


def swap_in(tmp: Path, path: Path) -> None:
    """Replace ``path`` by the finished folder ``tmp`` (the old one removed only after the rename)."""
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


@dataclass(frozen=True)
class MixtureFolder:
    """A mixture folder read back: the arguments of :class:`~experts.mixture.MixtureOfExperts`."""

    intervals: Intervals
    experts: list[nn.Module]
    archs: list[Arch | None]
    allocation: Allocation | None
    info: dict[str, Any]
    schedule: StepSchedule | None = None


def read_mixture_folder(path: Path, *, device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None) -> MixtureFolder:
    """Load the experts (in eval mode, optionally cast) and the records of a mixture folder.

    Raises:
        UserError: not a mixture folder, an unsupported format, or an unknown expert kind.
    """
    meta_file = path / MIXTURE_FILE
    if not meta_file.is_file():
        raise UserError(f"{path} is not a mixture folder (no {MIXTURE_FILE}); save one with MixtureOfExperts.save_pretrained")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise UserError(f"{meta_file}: unsupported format {meta.get('format')!r} version {meta.get('version')!r}")
    intervals = Intervals.from_dict(meta["intervals"])
    models = [_load_expert(path, entry, meta_file, device, torch_dtype) for entry in meta["experts"]]
    experts = [models[j] for j in meta["expert_of_interval"]]
    archs = [Arch(a) if a is not None else None for a in meta["archs"]]
    allocation = Allocation.from_dict(meta["allocation"]) if meta.get("allocation") else None
    schedule = StepSchedule.from_dict(meta["schedule"]) if meta.get("schedule") else None
    return MixtureFolder(intervals, experts, archs, allocation, meta.get("info") or {}, schedule)


def _load_expert(path: Path, entry: Mapping[str, str], meta_file: Path, device: str | torch.device,
                 torch_dtype: torch.dtype | None) -> nn.Module:
    from experts.expert_folder import quiet_diffusers
    from search_spaces.elastic_unet import ElasticUNet
    from search_spaces.materialize import load_materialized

    folder = path / entry["folder"]
    kind = entry["kind"]
    if kind not in ("supernet", "materialized", "unet"):
        raise UserError(f"{meta_file}: unknown expert kind {kind!r}")
    with quiet_diffusers():
        if kind == "supernet":
            m = ElasticUNet.from_pretrained(folder, device=device)
        else:
            m = load_materialized(folder, device=device)
    if torch_dtype is not None:
        m = m.to(torch_dtype)
    return m.eval()
