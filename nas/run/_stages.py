"""The stage registry: what ``diffnas run`` runs, in which order, and what each stage's key hashes.

The method's own stages are registered by :mod:`nas.pipeline`; other packages (e.g. the
benchmarks' fine-tuning, bench and report stages) register theirs from their ``diffnas.plugins``
entry point. :func:`load_stages` imports :data:`STAGE_MODULES`, which registers both.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nas.config import BenchConfig, ExperimentConfig, ExpertsConfig, config_to_dict

if TYPE_CHECKING:  # pragma: no cover
    from nas.run._context import RunContext

__all__ = ["STAGE_MODULES", "Stage", "all_stages", "get_stage", "load_stages", "register_stage", "stage_key",
           "stage_names"]

#: Modules that register stages when imported (the method's own stages, then the plugins').
STAGE_MODULES: list[str] = ["nas.pipeline"]

# config sections each stage adds to the ones before it (sections not listed anywhere, e.g. a
# section added later, count from the router stage on: conservative)
_KNOWN_SECTIONS = ("seed", "data", "model", "intervals", "space", "experts", "sampling", "search",
                   "evaluation", "bench", "name", "run_root", "device", "threads", "condition")
_IGNORED_SECTIONS = ("name", "run_root", "device", "threads")  # where/how fast, not what
# sections left out of config.yaml at their defaults: when present they join the key of the named
# stage and every later one (the experts train with condition.dropout; absent, keys stay those of a
# run made before the section existed)
_OPTIONAL_SECTIONS = {"condition": "experts"}


@dataclass(frozen=True)
class Stage:
    """One stage of :func:`nas.run.run_pipeline`.

    Attributes:
        name: what ``--skip``/``--force``, the logs and ``pipeline.json`` call it.
        description: one line for the progress display.
        sections: config sections this stage adds to its key (on top of the earlier stages');
            ``"*"`` stands for every section no stage names.
        run: runs the stage on a :class:`~nas.run.RunContext`; returns a one-line summary.
        outputs: the files or folders that must exist for the stage to count as done.
        position: stages run in increasing position.
    """

    name: str
    description: str
    sections: tuple[str, ...]
    run: Callable[[RunContext], str]
    outputs: Callable[[RunContext], Sequence[Path]]
    position: float


_REGISTRY: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add ``stage`` to the registry (registering the same stage again does nothing).

    Raises:
        ValueError: another stage of that name, or at that position, is registered.
    """
    existing = _REGISTRY.get(stage.name)
    if existing is not None and existing != stage:
        raise ValueError(f"stage {stage.name!r} is registered twice")
    clash = [s.name for s in _REGISTRY.values() if s.position == stage.position and s.name != stage.name]
    if clash:
        raise ValueError(f"stage {stage.name!r} has the position of stage {clash[0]!r}")
    _REGISTRY[stage.name] = stage
    return stage


def load_stages() -> None:
    """Import :data:`STAGE_MODULES` (registering the method's stages and the plugins')."""
    for module in STAGE_MODULES:
        importlib.import_module(module)


def all_stages() -> tuple[Stage, ...]:
    """Every registered stage, in running order."""
    load_stages()
    return tuple(sorted(_REGISTRY.values(), key=lambda s: s.position))


def stage_names() -> tuple[str, ...]:
    """The registered stages' names, in running order."""
    return tuple(s.name for s in all_stages())


def get_stage(name: str) -> Stage:
    """The stage called ``name``.

    Raises:
        ValueError: no such stage (the message lists them).
    """
    stages = {s.name: s for s in all_stages()}
    if name not in stages:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(stages)}")
    return stages[name]


def stage_key(cfg: ExperimentConfig, stage: str) -> str:
    """Hash of the config sections ``stage`` and every stage before it depend on.

    Example:
        >>> from nas.config import load_config
        >>> a, b = load_config(None, []), load_config(None, ["search.n_trials=3"])
        >>> stage_key(a, "router") == stage_key(b, "router"), stage_key(a, "search") == stage_key(b, "search")
        (True, False)
    """
    get_stage(stage)
    d = config_to_dict(cfg)
    if not cfg.schedule.joint:  # its other keys change nothing then: keys stay those of a run before it
        d.pop("schedule", None)
    for key in ExpertsConfig.EXECUTION_KEYS:  # where/how fast the experts train (Ray tasks), not what
        d.get("experts", {}).pop(key, None)
    for key in BenchConfig.EXECUTION_KEYS:  # where the bench's fine-tuning and sampling run, not what
        d.get("bench", {}).pop(key, None)
    sections: list[str] = []
    for s in all_stages():
        sections += [sec for sec, first in _OPTIONAL_SECTIONS.items() if first == s.name and sec in d]
        for sec in s.sections:
            if sec == "*":
                sections += [k for k in d if k not in _KNOWN_SECTIONS and k not in _IGNORED_SECTIONS]
            else:
                sections.append(sec)
        if s.name == stage:
            break
    payload = {sec: d.get(sec) for sec in sorted(set(sections))}
    payload["stage"] = stage
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
