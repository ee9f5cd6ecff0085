"""The single registry of ``diffnas`` subcommands.

A subcommand is a function ``(cfg, args) -> int`` registered with :func:`register`; it parses
nothing itself and calls one library function. Extra options of its own go in ``arguments``.
To add a subcommand: write it in a module under ``nas/commands/`` with ``@register(...)`` and
add the module name to :data:`COMMAND_MODULES`; another package registers its own from its
``diffnas.plugins`` entry point (e.g. ``diffnas bench`` and ``diffnas report`` from the
benchmarks). Keep command modules light at import time (torch and diffusers are imported inside
the library functions), so ``diffnas --help`` stays quick.

Example:
    >>> sorted(n for n in all_commands() if n in ("train-base", "sample", "evaluate"))
    ['evaluate', 'sample', 'train-base']
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nas.methods import load_plugins

if TYPE_CHECKING:  # pragma: no cover
    from nas.config import ExperimentConfig

__all__ = ["COMMAND_MODULES", "Command", "all_commands", "register"]

#: Modules that define subcommands; imported (in this order) when the CLI starts.
COMMAND_MODULES: list[str] = [
    "nas.commands.base",
    "nas.commands.intervals",
    "nas.commands.experts",
    "nas.commands.search",
    "nas.commands.route",
    "nas.commands.run",
]

CommandFn = Callable[["ExperimentConfig", argparse.Namespace], int]
ArgumentsFn = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """One registered subcommand.

    Attributes:
        name: what the user types (``train-base``).
        help: one line for ``diffnas --help``.
        func: ``(cfg, args) -> exit code``.
        arguments: adds the command's own options to its parser, or ``None``.
        description: longer text for ``diffnas <name> --help`` (defaults to ``help``).
    """

    name: str
    help: str
    func: CommandFn
    arguments: ArgumentsFn | None = None
    description: str = ""


_REGISTRY: dict[str, Command] = {}


def register(
    name: str, help: str, arguments: ArgumentsFn | None = None, description: str = ""
) -> Callable[[CommandFn], CommandFn]:
    """Decorator: register ``func`` as subcommand ``name``.

    Example:
        >>> @register("hello-doc", "say hello")
        ... def hello(cfg, args):
        ...     return 0
        >>> all_commands()["hello-doc"].help
        'say hello'
        >>> _ = _REGISTRY.pop("hello-doc")
    """

    def deco(func: CommandFn) -> CommandFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.func is not func:
            if (existing.func.__module__, existing.func.__qualname__) != (func.__module__, func.__qualname__):
                raise ValueError(f"subcommand {name!r} is registered twice")
        _REGISTRY[name] = Command(name, help, func, arguments, description or help)
        return func

    return deco


def all_commands() -> dict[str, Command]:
    """Every registered subcommand (importing :data:`COMMAND_MODULES` and loading the plugins
    first), in order."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    load_plugins()
    return dict(_REGISTRY)
