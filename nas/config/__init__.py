"""Experiment configuration: one frozen dataclass per stage, nested in :class:`ExperimentConfig`.

YAML comes in, strictly: an unknown key or a value of the wrong type raises
:class:`~nas.errors.UserError` naming the full dotted key. Values are layered, later wins:

    dataclass defaults < preset (``nas/presets/<name>.yaml``) < config file < ``--set key=value``

The conversion walks the dataclasses' type hints (``int``, ``float``, ``bool``, ``str``,
``Optional[...]``, ``Literal[...]``, ``tuple[T, ...]``, ``tuple[A, B]``, ``dict[str, T]``, nested
dataclasses), so adding a stage is one dataclass plus one field in :class:`ExperimentConfig`.
Range checks live in each dataclass's ``__post_init__`` through :func:`require`, which names the
key; the loader prefixes it with the section path.

Example:
    >>> cfg = load_config(None, ["sampling.num_steps=50", "space.width_fractions=[0.5, 1.0]"])
    >>> cfg.sampling.num_steps, cfg.space.width_fractions
    (50, (0.5, 1.0))
    >>> config_from_dict(config_to_dict(cfg)) == cfg
    True
    >>> load_config(None, ["model.trian_steps=5"])
    Traceback (most recent call last):
    ...
    search_spaces.errors.UserError: unknown config key 'model.trian_steps' (did you mean 'model.train_steps'?)

Modules: :mod:`~nas.config.checks` (:func:`require`), :mod:`~nas.config.sections` (run-wide
sections, :class:`ExperimentConfig`), :mod:`~nas.config.stages` (pipeline stage sections),
:mod:`~nas.config.convert` (plain data <-> dataclasses), :mod:`~nas.config.loader` (presets,
files, overrides). Import from ``nas.config``.
"""

from __future__ import annotations

from nas.config.checks import ConfigValueError, is_name, require
from nas.config.convert import build_dataclass, config_from_dict, config_to_dict, config_to_yaml, show_value
from nas.config.loader import apply_overrides, dump_config, list_presets, load_config, load_preset_dict
from nas.config.sections import (ConditionConfig, DataConfig, EvalConfig, ExperimentConfig, ModelConfig, SamplingConfig,
                                  ScheduleConfig, SpaceConfig)
from nas.config.stages import BenchConfig, ExpertsConfig, IntervalsConfig, RouterConfig, SearchConfig

__all__ = [
    "BenchConfig",
    "ConditionConfig",
    "ConfigValueError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ExpertsConfig",
    "IntervalsConfig",
    "ModelConfig",
    "RouterConfig",
    "SamplingConfig",
    "ScheduleConfig",
    "SearchConfig",
    "SpaceConfig",
    "apply_overrides",
    "build_dataclass",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "dump_config",
    "is_name",
    "list_presets",
    "load_config",
    "load_preset_dict",
    "require",
    "show_value",
]
