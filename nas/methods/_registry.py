"""The registry of allocation methods and the plugin loader that fills it."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from importlib import metadata

from nas.errors import UserError
from nas.methods._method import AllocationMethod

__all__ = [
    "PLUGIN_GROUP",
    "all_methods",
    "get_method",
    "load_plugins",
    "methods_needing",
    "register_method",
    "unregister_method",
]

log = logging.getLogger(__name__)

#: Entry-point group of diffnas plugins: each entry point is a callable run once, with no
#: arguments, that registers methods (and commands, stages) of its package.
PLUGIN_GROUP = "diffnas.plugins"

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_methods: dict[str, AllocationMethod] = {}
_loaded = False
_lock = threading.RLock()


def register_method(method: AllocationMethod | type[AllocationMethod]) -> AllocationMethod:
    """Register an allocation method (an instance, or a class built with no arguments).

    Registering the same class again replaces the earlier instance; another class under a name
    already taken is an error. Methods are listed in registration order (the report's order).

    Raises:
        TypeError: not an :class:`AllocationMethod`.
        ValueError: no ``name``/``label``, a name that is not an identifier, or a name taken.

    Example:
        >>> from nas.methods import AllocationMethod, register_method, unregister_method
        >>> class Toy(AllocationMethod):
        ...     name, label = "toy_doc", "toy"
        ...     def candidate(self, ctx, budget, config_key):
        ...         return "not here"
        >>> register_method(Toy).name
        'toy_doc'
        >>> unregister_method("toy_doc")
    """
    if isinstance(method, type):
        if not issubclass(method, AllocationMethod):
            raise TypeError(f"{method.__name__} is not an AllocationMethod subclass")
        method = method()
    if not isinstance(method, AllocationMethod):
        raise TypeError(f"{method!r} is not an AllocationMethod")
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{type(method).__name__}.name must be an identifier (letters, digits, _), got {name!r}")
    if not isinstance(getattr(method, "label", None), str):
        raise ValueError(f"{type(method).__name__}.label must be a string")
    with _lock:
        old = _methods.get(name)
        if old is not None and type(old) is not type(method):
            raise ValueError(f"allocation method {name!r} is already registered by "
                             f"{type(old).__module__}.{type(old).__qualname__}")
        _methods[name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a registered method (a no-op when there is none of that name)."""
    with _lock:
        _methods.pop(name, None)


def load_plugins() -> None:
    """Run every entry point of group :data:`PLUGIN_GROUP` once per process (in name order).

    ``diffnas`` itself registers its benchmark methods this way (``benchmarks.plugin:register``
    in ``setup.cfg``), so a third-party package adds methods by declaring the same group.

    Raises:
        UserError: a plugin fails to load or to register; names the entry point.
    """
    global _loaded
    with _lock:
        if _loaded:
            return
        # set first: a plugin that loads a config while registering must not load plugins again
        _loaded = True
        seen: set[str] = set()
        for ep in sorted(metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: (e.name, e.value)):
            if ep.value in seen:  # one distribution found twice on sys.path (an editable install)
                continue
            seen.add(ep.value)
            try:
                ep.load()()
            except Exception as exc:
                raise UserError(f"diffnas plugin {ep.name!r} ({ep.value}) failed to load: "
                                f"{type(exc).__name__}: {exc}") from exc
            log.debug("loaded diffnas plugin %s (%s)", ep.name, ep.value)


def all_methods() -> dict[str, AllocationMethod]:
    """``{name: method}`` of every registered method, in registration order (plugins loaded first).

    Example:
        >>> list(all_methods())[:3]
        ['router', 'search', 'uniform']
    """
    load_plugins()
    with _lock:
        return dict(_methods)


def get_method(name: str) -> AllocationMethod:
    """The registered method called ``name`` (plugins loaded first).

    Raises:
        KeyError: no such method; the message lists the registered ones.

    Example:
        >>> get_method("fewer_steps").label
        'base, fewer steps'
    """
    methods = all_methods()
    if name not in methods:
        raise KeyError(f"unknown allocation method {name!r}; registered: {', '.join(methods) or '(none)'}")
    return methods[name]


def methods_needing(stages: Iterable[str]) -> list[str]:
    """Names of the registered methods that read the outputs of any of ``stages``.

    Example:
        >>> methods_needing(["router"])
        ['router', 'search_seeded']
        >>> methods_needing(["experts"])
        ['router', 'search', 'uniform', 'steps', 'search_seeded', 'fewer_steps_tuned', 'uniform_steps']
    """
    wanted = set(stages)
    return [name for name, m in all_methods().items() if wanted & set(m.needs)]
