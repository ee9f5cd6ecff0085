"""Strict conversion: plain data (from YAML) -> config dataclasses, walking the type hints; and back
(plain dicts, YAML text).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import yaml

from nas.config.checks import ConfigValueError
from nas.config.sections import ExperimentConfig
from nas.errors import UserError

__all__ = ["build_dataclass", "config_from_dict", "config_to_dict", "config_to_yaml", "show_value"]

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def show_value(value: Any) -> str:
    """A value as config error messages show it (strings quoted, ``null``, ``true``/``false``).

    Example:
        >>> show_value("x"), show_value(None), show_value(True), show_value(2.5)
        ("'x'", 'null', 'true', '2.5')
    """
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _describe(tp: Any) -> str:
    """Human name of a type hint, for error messages ("an int", "a list of floats")."""
    origin = typing.get_origin(tp)
    if tp is int:
        return "an int"
    if tp is float:
        return "a number"
    if tp is bool:
        return "a bool (true/false)"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(show_value(c) for c in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            inner = _describe(args[0])
            for article in ("an ", "a "):
                if inner.startswith(article):
                    inner = inner[len(article):]
            return f"a list of {inner}s" if " " not in inner else f"a list of ({inner})"
        return f"a list of {len(args)} items"
    if origin in (dict, Mapping, typing.get_origin(Mapping[str, int])):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _wrong(key: str, tp: Any, value: Any) -> UserError:
    return UserError(f"config key '{key}' must be {_describe(tp)}, got {show_value(value)}")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert plain ``value`` to type hint ``tp`` or raise a UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return build_dataclass(tp, value, key)
    if tp in _SCALARS:
        if _SCALARS[tp](value):
            return float(value) if tp is float else value
        raise _wrong(key, tp, value)
    if origin is Literal:
        for choice in typing.get_args(tp):
            if type(choice) is type(value) and choice == value:
                return value
        raise _wrong(key, tp, value)
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, key)
    if origin in (tuple, list):
        return _convert_sequence(value, tp, key)
    if origin is dict or origin is Mapping or tp is dict:
        return _convert_mapping(value, tp, key)
    raise TypeError(f"config key '{key}': unsupported type hint {tp!r} (extend nas.config.convert._convert)")


def _is_float(value: Any) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    # PyYAML reads `1e-3` (no dot) as a string: accept plain numeric strings for floats.
    return isinstance(value, str) and bool(_FLOAT_RE.match(value.strip()))


#: scalar type -> whether a plain value is accepted as it (floats also from ints and numeric strings)
_SCALARS: dict[Any, Any] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: _is_float,
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
}


def _convert_union(value: Any, tp: Any, key: str) -> Any:
    """``Optional[...]``/``Union[...]``: the first member that accepts ``value``."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise _wrong(key, tp, value)
    members = [a for a in args if a is not type(None)]
    for arg in members:
        try:
            return _convert(value, arg, key)
        except UserError as err:
            # a problem deeper inside (a nested key, a list item) is the precise message
            if len(members) == 1 and str(err) != str(_wrong(key, arg, value)):
                raise
    raise _wrong(key, tp, value)


def _convert_sequence(value: Any, tp: Any, key: str) -> Any:
    """``tuple[T, ...]``, ``tuple[A, B]`` and ``list[T]`` from a YAML list; items named ``key[i]``."""
    if not isinstance(value, (list, tuple)):
        raise _wrong(key, tp, value)
    if typing.get_origin(tp) is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return [_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise UserError(
            f"config key '{key}' must be a list of {len(args)} items, got {len(value)}: {show_value(list(value))}"
        )
    return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _convert_mapping(value: Any, tp: Any, key: str) -> dict[Any, Any]:
    """``dict[K, V]`` from a YAML mapping; values named ``key.k``."""
    args = typing.get_args(tp) or (str, Any)
    if not isinstance(value, Mapping):
        raise _wrong(key, tp, value)
    out = {}
    for k, v in value.items():
        kk = _convert(k, args[0], f"{key} (key {show_value(k)})")
        out[kk] = _convert(v, args[1], f"{key}.{k}")
    return out


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from a mapping, strictly (unknown keys and wrong types are a
    UserError naming the dotted key, prefixed by ``prefix``)."""
    where = prefix or "the config"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        if prefix:
            raise UserError(f"config key '{prefix}' must be a mapping of settings, got {show_value(data)}")
        raise UserError(f"the config must be a mapping of settings, got {show_value(data)}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    dotted = (prefix + ".") if prefix else ""
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if not isinstance(k, str) or k not in names:
            raise _unknown_key(k, names, dotted, where)
        kwargs[k] = _convert(v, hints[k], dotted + k)
    try:
        return cls(**kwargs)
    except ConfigValueError as err:
        raise UserError(f"config key '{dotted}{err.key}' {err.detail}") from None


def _unknown_key(key: Any, names: Sequence[str], dotted: str, where: str) -> UserError:
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    hint = f" (did you mean '{dotted}{close[0]}'?)" if close else f" (known keys in {where}: {', '.join(names)})"
    return UserError(f"unknown config key '{dotted}{key}'{hint}")


def config_from_dict(data: Mapping[str, Any] | None) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from plain data (parsed YAML), strictly.

    Example:
        >>> config_from_dict({"sampling": {"num_steps": 10}}).sampling.num_steps
        10
    """
    return build_dataclass(ExperimentConfig, data, "")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


#: Keys added after run folders existed: left out of :func:`config_to_dict` while at these
#: defaults, so that those runs' ``config.yaml``, stage keys and bench keys stay as they were
#: (a later key registers here: ``(section, key): default``).
LATE_KEYS: dict[tuple[str, str], Any] = {("bench", "finetune_target"): "denoise",
                                          ("bench", "latency_batch_sizes"): [1, 64],
                                          ("experts", "data_parallel_workers"): 1, ("bench", "parallel"): False,
                                          ("schedule", "refine_evaluations"): 0,
                                          ("bench", "finetune_validation_images"): 0,
                                          ("bench", "finetune_validation_seed"): 10_000}


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) of a config dataclass; YAML/JSON friendly.

    Example:
        >>> config_to_dict(ExperimentConfig())["sampling"]["sampler"]
        'ddim'
    """
    out = _plain(cfg)
    if not isinstance(out, dict):
        raise TypeError(f"expected a config dataclass, got {type(cfg).__name__}")
    condition = getattr(cfg, "condition", None)  # at its defaults: left out (config.yaml, stage keys as before it)
    if condition is not None and dataclasses.is_dataclass(condition) and condition == type(condition)():
        out.pop("condition", None)
    for (section, key), default in LATE_KEYS.items():
        sec = out.get(section)
        if isinstance(sec, dict) and key in sec and sec[key] == default:
            del sec[key]
    return out


def config_to_yaml(cfg: Any, omit: tuple[str, ...] = ()) -> str:
    """The config as YAML text, keys in dataclass order, without the top-level keys in ``omit``.

    Example:
        >>> "num_steps: 20" in config_to_yaml(ExperimentConfig())
        True
    """
    d = {k: v for k, v in config_to_dict(cfg).items() if k not in omit}
    return yaml.dump(d, Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False)


class _ConfigDumper(yaml.SafeDumper):
    """Sections as blocks, lists of values inline (``block_out_channels: [32, 64, 64]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)
