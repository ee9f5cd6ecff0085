"""Loading configs: presets (``nas/presets/*.yaml``), YAML files, ``--set key=value`` overrides;
and writing the resolved config back.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nas.config.convert import config_from_dict, config_to_yaml, show_value
from nas.config.sections import ExperimentConfig
from nas.errors import UserError

__all__ = ["apply_overrides", "dump_config", "list_presets", "load_config", "load_preset_dict"]


def list_presets() -> list[str]:
    """Names of the presets shipped in ``nas/presets``.

    Example:
        >>> "demo" in list_presets()
        True
    """
    folder = importlib.resources.files("nas") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"cannot parse {source}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{source} must hold a mapping of settings at the top level, got {show_value(data)}")
    return data


def load_preset_dict(name: str) -> dict[str, Any]:
    """The raw settings of preset ``name`` (a plain dict), or a UserError listing the presets."""
    names = list_presets()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown preset '{name}'{hint}; available presets: {', '.join(names)}")
    text = (importlib.resources.files("nas") / "presets" / f"{name}.yaml").read_text(encoding="utf-8")
    return _parse_yaml(text, f"preset '{name}'")


def _load_file_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file '{p}' does not exist (check the --config path)")
    if not p.is_file():
        raise UserError(f"config path '{p}' is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read config file '{p}': {err}") from None
    return _parse_yaml(text, f"config file '{p}'")


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            here = ".".join(parts[: i + 1])
            raise UserError(f"cannot set '{dotted}': config key '{here}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"--set expects key=value (e.g. sampling.num_steps=50), got {text!r}")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set expects key=value with a dotted key (e.g. sampling.num_steps=50), got {text!r}")
    if raw.strip() == "":
        return key, ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"cannot parse the value in --set {text!r} (quote strings, use [a, b] for lists)") from None
    return key, value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (values parsed as YAML) to plain config data.

    Example:
        >>> apply_overrides({}, ["sampling.num_steps=50", "name=x"])
        {'sampling': {'num_steps': 50}, 'name': 'x'}
    """
    out = _merge({}, data)
    for text in overrides:
        key, value = _parse_override(text)
        _set_dotted(out, key, value)
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    preset: str | None = None,
) -> ExperimentConfig:
    """Resolve a config: defaults < ``preset`` < YAML file at ``path`` < ``overrides``.

    Args:
        path: YAML file, or ``None``.
        overrides: ``key=value`` strings; values are parsed as YAML (``[0.5, 1.0]``, ``true``).
        preset: name of a preset in ``nas/presets`` (see :func:`list_presets`), or ``None``.

    Raises:
        UserError: missing/unparsable file, unknown key, wrong type or value; the message
            names the dotted key.

    Example:
        >>> load_config(preset="demo", overrides=["seed=3"]).seed
        3
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    data: dict[str, Any] = {}
    if preset:
        data = _merge(data, load_preset_dict(preset))
    if path is not None:
        data = _merge(data, _load_file_dict(path))
    data = apply_overrides(data, overrides)
    return config_from_dict(data)


def dump_config(cfg: ExperimentConfig, path: str | os.PathLike[str], omit: tuple[str, ...] = ()) -> Path:
    """Write the resolved config as YAML to ``path`` (atomically: temp file then rename),
    without the top-level keys in ``omit``.

    Example:
        >>> import tempfile, os
        >>> p = dump_config(ExperimentConfig(), os.path.join(tempfile.mkdtemp(), "config.yaml"))
        >>> load_config(p) == ExperimentConfig()
        True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = config_to_yaml(cfg, omit=omit)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
